-- conversation: the IMs of one conversation, oldest first.
--
-- Candidates are the IMs that share the given Call-ID (session mode, or a
-- client that reuses one Call-ID) and the IMs whose participants (sender
-- and recipients) are exactly the given IM's, in either direction. Sorted
-- by time, the candidates fall into sessions wherever two neighbours are
-- more than {gap_ns} ns apart; the conversation is every candidate from
-- the first session holding an IM of the Call-ID to the last one. Display
-- names are shown as the From and To headers gave them (the To name is the
-- first recipient's).
--
-- A conference's copies share the Call-ID `conf-ID@DOMAIN`; for it, the
-- messages written to the focus ({focus}: `sip:conf-ID@DOMAIN`, else NULL)
-- are seeds too, so the conference is one conversation, whatever the gaps.
WITH candidates AS (
    SELECT
        time, call_id, cseq, sender, from_display, recipients, to_display, body,
        delivery_status, status,
        (call_id = {call_id} OR coalesce(array_has(recipients, {focus}), false)) AS seed
    FROM im_messages
    WHERE call_id = {call_id}
       OR coalesce(array_has(recipients, {focus}), false)
       OR (sender IN ({participant_list})
           AND array_to_string(array_sort(array_distinct(array_append(recipients, sender))), ' ')
               = {participant_key})
),
breaks AS (
    SELECT
        *,
        CASE
            WHEN CAST(time AS BIGINT)
                 - lag(CAST(time AS BIGINT)) OVER (ORDER BY time, call_id, cseq) > {gap_ns}
            THEN 1 ELSE 0
        END AS new_session
    FROM candidates
),
sessions AS (
    SELECT
        *,
        sum(new_session) OVER (
            ORDER BY time, call_id, cseq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS session
    FROM breaks
),
span AS (
    SELECT min(session) AS first_session, max(session) AS last_session
    FROM sessions
    WHERE seed
)
SELECT
    time, call_id, cseq, sender, nullif(from_display, '') AS sender_name, recipients,
    nullif(to_display, '') AS recipient_name, body, delivery_status, status
FROM sessions
JOIN span ON session BETWEEN first_session AND last_session
ORDER BY time, call_id, cseq
