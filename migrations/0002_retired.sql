-- When a finished campaign's per-order data left Redis (MySQL holds all of it).
-- NULL while Redis still holds it; such campaigns are rebuilt if Redis loses them.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS retired_ms BIGINT NULL;
