-- Every change an operator made to a campaign (launch, tune, end), with who made it and
-- the campaign before and after (JSON), written in the same transaction as the change:
-- a recorded change is a made change, and a refused one is not recorded.
CREATE TABLE IF NOT EXISTS campaign_changes (
    change_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign_id VARCHAR(64) NOT NULL,
    at_ms BIGINT NOT NULL,
    operator VARCHAR(32) NOT NULL,
    action VARCHAR(16) NOT NULL,
    before_json MEDIUMTEXT NULL,
    after_json MEDIUMTEXT NOT NULL,
    KEY campaign_changes_newest (campaign_id, change_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
