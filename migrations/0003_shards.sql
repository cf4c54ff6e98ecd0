-- How many shards a campaign's stock is spread over in Redis (1: unsharded), so a
-- campaign Redis lost is rebuilt with the same layout.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS shards SMALLINT UNSIGNED NOT NULL DEFAULT 1;
