-- im-volume: IMs per hour or per day, by delivery outcome, with the number
-- of distinct senders. With --user, the IMs that user sent or received
-- (recipients are a list: matched through unnest, keyed as call_id#cseq).
SELECT
    {period_label} AS period,
    count(*) AS ims,
    count(*) FILTER (WHERE delivery_status = 'delivered') AS delivered,
    count(*) FILTER (WHERE delivery_status = 'failed') AS failed,
    count(*) FILTER (WHERE delivery_status = 'unanswered') AS unanswered,
    count(DISTINCT sender) AS senders
FROM im_messages
WHERE {in_range}
  AND (
    {user} IS NULL
    OR sender = {user}
    OR call_id || '#' || CAST(cseq AS VARCHAR) IN (
        SELECT call_id || '#' || CAST(cseq AS VARCHAR)
        FROM (SELECT call_id, cseq, unnest(recipients) AS recipient FROM im_messages WHERE {in_range})
        WHERE recipient = {user}
    )
  )
GROUP BY {period}
ORDER BY {period}
