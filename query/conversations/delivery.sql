-- conversation, second step: each IM of the conversation (the in-memory
-- table `conversation`, from conversation.sql) with who it was delivered to
-- and when: the earliest archived copy of its 2xx final response in
-- sip_messages. The days the conversation spans bound the scan ({in_days}).
WITH responses AS (
    SELECT call_id, cseq, min(time) AS answered
    FROM sip_messages
    WHERE {in_days}
      AND status BETWEEN 200 AND 299
      AND cseq_method = 'MESSAGE'
      AND call_id IN (SELECT call_id FROM conversation)
    GROUP BY call_id, cseq
)
SELECT
    c.time,
    c.call_id || '#' || CAST(c.cseq AS VARCHAR) AS key,
    c.sender,
    c.sender_name,
    c.recipients,
    c.recipient_name,
    c.delivery_status,
    c.status,
    CASE WHEN c.delivery_status = 'delivered' THEN c.recipients END AS delivered_to,
    CASE WHEN c.delivery_status = 'delivered' THEN r.answered END AS delivered_at,
    c.body
FROM conversation c
LEFT JOIN responses r ON r.call_id = c.call_id AND r.cseq = c.cseq
ORDER BY c.time, c.call_id, c.cseq
