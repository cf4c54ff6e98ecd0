-- One row per order: its lines inline (`sku:quantity:price_cents`, comma-separated; sku
-- ids are [A-Za-z0-9_-]). Rows written before this migration keep theirs in
-- order_items, and every reader takes either. Adding a NULL column at the end is
-- instant in MariaDB: no copy of the table while the system serves.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS items VARCHAR(2048) NULL;

-- Units of a campaign's pending and paid orders per sku, kept by the persister in the
-- same transaction as the orders it writes, so reconciliation reads two small rows per
-- sku instead of summing the campaign's orders.
CREATE TABLE IF NOT EXISTS order_units (
    campaign_id VARCHAR(64) NOT NULL,
    sku_id VARCHAR(64) NOT NULL,
    pending_units BIGINT NOT NULL DEFAULT 0,
    paid_units BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, sku_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- When order_units began to hold a campaign's full sums: set at launch, or by the
-- worker's one-time count of a campaign launched before this migration (NULL until
-- then; reconciliation sums the orders meanwhile).
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS units_counted_ms BIGINT NULL;
