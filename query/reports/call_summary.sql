-- call-summary: per day (or per calling user), how many calls were tried,
-- how many were answered, the answer-seizure ratio, the average time to
-- ring and the average length of an answered call.
SELECT
    {group_label} AS {group_name},
    count(*) AS calls,
    count(*) FILTER (WHERE disposition = 'answered') AS answered,
    round(100.0 * count(*) FILTER (WHERE disposition = 'answered') / count(*), 2) AS asr_percent,
    round(avg(setup_ms), 1) AS avg_setup_ms,
    round(avg(duration_ms) FILTER (WHERE disposition = 'answered') / 1000.0, 1) AS avg_duration_s
FROM calls
WHERE {in_range}
  AND ({user} IS NULL OR caller = {user} OR callee = {user})
GROUP BY {group}
ORDER BY {group}
