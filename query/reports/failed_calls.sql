-- failed-calls: calls that were not answered, by final SIP code and reason
-- (a call that timed out has neither), most frequent first.
SELECT
    final_code,
    reason,
    disposition,
    count(*) AS calls,
    count(DISTINCT caller) AS callers,
    min(time) AS first_seen,
    max(time) AS last_seen
FROM calls
WHERE {in_range}
  AND disposition <> 'answered'
  AND ({user} IS NULL OR caller = {user} OR callee = {user})
GROUP BY final_code, reason, disposition
ORDER BY calls DESC, final_code NULLS LAST, reason, disposition
