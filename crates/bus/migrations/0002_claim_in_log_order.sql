-- A member claims ready messages in log order: it walks the primary key
-- (queue, seq) and stops after its batch. The index on (queue, available_at) led
-- SQLite to collect every ready message of the queue, read each one's envelope and
-- sort them by seq for every claim, so a claim cost grew with the backlog.
DROP INDEX queue_messages_ready;
