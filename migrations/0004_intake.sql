-- Intake (F-01, F-06, B-6): the intake worker picks up accepted deliveries
-- that are not processed yet (also after a crash between ack and work), in
-- arrival order; without this index that is a scan of the whole history.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (id) WHERE processed_at IS NULL;
