-- Orders the persister could never apply, or that RabbitMQ dead-lettered after their
-- delivery limit: kept here (never dropped) for an operator to list and send back.
-- `event` is the order event as it travelled (JSON); `replay_requested` is set by the
-- operator API and cleared by the worker once it has published the event again.
CREATE TABLE IF NOT EXISTS dead_letters (
    order_id VARCHAR(100) NOT NULL PRIMARY KEY,
    campaign_id VARCHAR(64) NOT NULL,
    reason VARCHAR(32) NOT NULL,
    at_ms BIGINT NOT NULL,
    event MEDIUMTEXT NOT NULL,
    replay_requested TINYINT NOT NULL DEFAULT 0,
    KEY dead_letters_newest (at_ms, order_id),
    KEY dead_letters_replay (replay_requested)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
