-- Version 3: when a restarted job may start again (a growing back-off after each crash), and a
-- fault to inject into its first attempt (reliability tests only; honoured only when the studio
-- was started with FINETUNE_ALLOW_FAULTS=1).

ALTER TABLE jobs ADD COLUMN retry_at INTEGER;
ALTER TABLE jobs ADD COLUMN fault TEXT;
