-- When a finished campaign's per-order data left Redis (MySQL holds all of it).
-- NULL while Redis still holds it; such campaigns are rebuilt if Redis loses them.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS retired_ms BIGINT NULL;
-- When the campaign was last rebuilt from MySQL after Redis lost it. An order created
-- before then that MySQL does not hold was lost with Redis (its units may have been
-- sold again): the persister refuses to insert it.
ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS restored_ms BIGINT NULL;
