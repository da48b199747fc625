-- One cart checkout at a time per customer, so that one cart is never bought twice by
-- checkouts that run at once (svc_order/checkout.py). A cart checkout claims its customer's
-- cart when it writes its intent (cart_version not NULL) and holds the claim until the cart
-- it bought is cleared; an attempt that fails gives the claim up as it starts to undo (it can
-- never be placed then), so the shopper may try the same cart again at once. A second cart
-- checkout of the same customer, while the first holds the claim, fails on this index and
-- never takes stock. The claim is per customer, not per cart version: versions start
-- again when a cart expires or Redis loses it, so a version number does not name one cart
-- for good; and a cart changed during a checkout (a new version) still holds what that
-- checkout is buying.
--
-- cart_stamp: the cart's expires_at as the checkout read it. It changes with every write of
-- the cart (with the version), so a clear made long after the read (recovery) can tell the
-- cart it bought from a later cart that happens to be at the same version number.
ALTER TABLE orders ADD COLUMN cart_stamp text;

-- Rows from before the claim: an attempt being undone will never be placed, so it needs no
-- claim; of several unfinished cart checkouts of one customer only the newest keeps its
-- claim (an older one's clear could only find a cart that has moved on since).
UPDATE orders SET cart_version = NULL
WHERE cart_version IS NOT NULL AND checkout_state = 'compensating';
UPDATE orders SET cart_version = NULL
WHERE cart_version IS NOT NULL AND id NOT IN (
    SELECT max(id) FROM orders WHERE cart_version IS NOT NULL GROUP BY user_id);

CREATE UNIQUE INDEX orders_one_cart_checkout ON orders (user_id) WHERE cart_version IS NOT NULL;
