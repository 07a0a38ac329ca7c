-- Admission control counts the orders still waiting for the kitchen's decision
-- several times a second.
CREATE INDEX orders_by_status ON orders (status, created_at);
