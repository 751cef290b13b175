-- cdr: every call in the range, oldest first; with --user, the calls that
-- user placed or received.
SELECT
    time AS start,
    call_id,
    caller,
    callee,
    disposition,
    final_code,
    reason,
    ended_by,
    setup_ms,
    duration_ms,
    answer_time,
    end_time
FROM calls
WHERE {in_range}
  AND ({user} IS NULL OR caller = {user} OR callee = {user})
ORDER BY time, call_id
