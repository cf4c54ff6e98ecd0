-- One secondary index on orders instead of two: (campaign_id, status, expires_ms) serves
-- what orders_campaign (campaign_id, status) served and the expiry sweep, which now walks
-- a campaign's pending orders in deadline order, so orders_due (status, expires_ms) goes.
-- Every order row (its insert, each change of its status) writes one index entry less.
-- Built online (no lock on the table while the system serves); dropping an index is a
-- change of metadata only. A build before this one sweeps with orders_due: to roll back
-- past it, add that index again first (docs/operations.md, "Upgrades and rollbacks").
ALTER TABLE orders ADD INDEX IF NOT EXISTS orders_campaign_due (campaign_id, status, expires_ms),
    ALGORITHM = INPLACE, LOCK = NONE;
ALTER TABLE orders DROP INDEX IF EXISTS orders_due, DROP INDEX IF EXISTS orders_campaign;
