-- Notifications follow order.status_changed: one per order and status, even when two
-- events report the same change. order_status is the status the order reached:
-- placed, accepted, ready, picked_up, delivered, rejected, cancelled or
-- payment_declined. Rows written from order.placed and order.ready before this
-- migration get the status that their event type implies. customer_id is never empty
-- in new rows, because order.status_changed carries it.
ALTER TABLE notifications ADD COLUMN order_status TEXT NOT NULL DEFAULT '';

UPDATE notifications SET order_status = 'placed' WHERE event_type = 'order.placed';
UPDATE notifications SET order_status = 'ready' WHERE event_type = 'order.ready';

-- The unique index also serves lookups by order, so the plain one goes.
CREATE UNIQUE INDEX notifications_order_status ON notifications (order_id, order_status);
DROP INDEX notifications_order;
