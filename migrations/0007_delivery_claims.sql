-- Several gateways (a sharded bot) share one store, and each runs an outbox. Before posting a
-- job's final message an outbox claims it until delivery_claimed_until (unix ms); no other
-- outbox takes the job while the claim lives, so a result is never posted by two at once. A
-- claim ends with the delivery (or its failure); one left by a process that died expires.

ALTER TABLE jobs ADD COLUMN delivery_claimed_until INTEGER;
