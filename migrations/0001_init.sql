-- Campaigns as launched; the operator API writes them, both binaries read them.
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    starts_ms BIGINT NOT NULL,
    ends_ms BIGINT NOT NULL,
    per_user_limit BIGINT NOT NULL,
    payment_window_secs INT UNSIGNED NOT NULL,
    max_orders_per_sec INT UNSIGNED NULL,
    max_user_requests_per_sec INT UNSIGNED NULL,
    created_ms BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Stock per sku. The persister moves units between the three buckets with guarded
-- updates, so no bucket ever goes negative and the sum never changes.
CREATE TABLE IF NOT EXISTS campaign_items (
    campaign_id VARCHAR(64) NOT NULL,
    sku_id VARCHAR(64) NOT NULL,
    price_cents BIGINT NOT NULL,
    stock_total BIGINT NOT NULL,
    available BIGINT NOT NULL,
    reserved BIGINT NOT NULL DEFAULT 0,
    sold BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, sku_id),
    CONSTRAINT stock_never_negative CHECK (available >= 0 AND reserved >= 0 AND sold >= 0),
    CONSTRAINT stock_adds_up CHECK (available + reserved + sold = stock_total),
    CONSTRAINT campaign_items_campaign FOREIGN KEY (campaign_id) REFERENCES campaigns (campaign_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per order, keyed by the order id the gateway made: a redelivered message
-- cannot insert twice.
CREATE TABLE IF NOT EXISTS orders (
    order_id VARCHAR(100) NOT NULL PRIMARY KEY,
    campaign_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    status VARCHAR(20) NOT NULL,
    total_cents BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    paid_ms BIGINT NULL,
    updated_ms BIGINT NOT NULL,
    KEY orders_due (status, expires_ms),
    KEY orders_campaign (campaign_id, status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS order_items (
    order_id VARCHAR(100) NOT NULL,
    sku_id VARCHAR(64) NOT NULL,
    quantity BIGINT NOT NULL,
    price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku_id),
    CONSTRAINT order_items_order FOREIGN KEY (order_id) REFERENCES orders (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Payment provider events already applied (replays have no effect).
CREATE TABLE IF NOT EXISTS payment_events (
    event_id VARCHAR(128) NOT NULL PRIMARY KEY,
    order_id VARCHAR(100) NOT NULL,
    status VARCHAR(20) NOT NULL,
    amount_cents BIGINT NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    received_ms BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
