-- What a shard rebuilt from MySQL needs to keep answering retries as before the loss:
-- the reservation's Idempotency-Key (the request's fingerprint is the order's lines)
-- and the payment event that paid the order. NULL for orders from before this column.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS idempotency_key VARCHAR(128) NULL;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS payment_event_id VARCHAR(128) NULL;
