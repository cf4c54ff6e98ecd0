-- The newest outbox stream id the relay has passed on, per stream (a campaign, or one
-- shard of it). A stream in Redis whose last id is older no longer knows work MySQL
-- holds: its shard came back behind (a failover to a replica that missed the last
-- writes) and is rebuilt. Written before each publish, only ever raised.
CREATE TABLE IF NOT EXISTS outbox_relayed (
    stream VARCHAR(100) NOT NULL PRIMARY KEY,
    campaign_id VARCHAR(64) NOT NULL,
    last_ms BIGINT UNSIGNED NOT NULL,
    last_seq BIGINT UNSIGNED NOT NULL,
    KEY outbox_relayed_campaign (campaign_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
