-- The order-service process running a checkout. Each process holds a session advisory lock
-- on (OWNER_LOCK_SPACE, owner) for as long as it lives (svc_order/store.py, OwnerLock): a
-- checkout whose owner's lock is free was left by a process that died, and is taken over
-- at once, instead of after its lease. NULL: no live owner is known (only the lease counts).
ALTER TABLE orders ADD COLUMN owner integer CHECK (owner > 0);
