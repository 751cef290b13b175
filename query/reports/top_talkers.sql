-- top-talkers: the users with the most time on answered calls, placed or
-- received, most first.
WITH parties AS (
    SELECT caller AS party, disposition, duration_ms FROM calls WHERE {in_range}
    UNION ALL
    SELECT callee, disposition, duration_ms FROM calls WHERE {in_range}
)
SELECT
    party AS "user",
    count(*) AS calls,
    count(*) FILTER (WHERE disposition = 'answered') AS answered,
    round(coalesce(sum(duration_ms), 0) / 60000.0, 1) AS talk_minutes
FROM parties
WHERE {user} IS NULL OR party = {user}
GROUP BY party
ORDER BY coalesce(sum(duration_ms), 0) DESC, party
LIMIT {top}
