-- user-activity: per user, IMs sent and received and calls placed and
-- received. A multiparty IM counts once for each of its recipients.
WITH activity AS (
    SELECT sender AS party, 1 AS ims_sent, 0 AS ims_received, 0 AS calls_placed, 0 AS calls_received
    FROM im_messages
    WHERE {in_range}
    UNION ALL
    SELECT recipient, 0, 1, 0, 0
    FROM (SELECT unnest(recipients) AS recipient FROM im_messages WHERE {in_range})
    UNION ALL
    SELECT caller, 0, 0, 1, 0
    FROM calls
    WHERE {in_range}
    UNION ALL
    SELECT callee, 0, 0, 0, 1
    FROM calls
    WHERE {in_range}
)
SELECT
    party AS "user",
    sum(ims_sent) AS ims_sent,
    sum(ims_received) AS ims_received,
    sum(calls_placed) AS calls_placed,
    sum(calls_received) AS calls_received
FROM activity
WHERE {user} IS NULL OR party = {user}
GROUP BY party
ORDER BY party
