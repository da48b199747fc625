-- Checkout details (#17): what an order was bought with, kept as it was at checkout.
-- Orders from before this migration have none of it (NULL): their total is all goods.
ALTER TABLE orders ADD COLUMN subtotal_cents bigint CHECK (subtotal_cents >= 0);
ALTER TABLE orders ADD COLUMN delivery_option text;
ALTER TABLE orders ADD COLUMN delivery_cents bigint CHECK (delivery_cents >= 0);
-- The delivery address as a JSON object of shopkit.address.AddressBody's fields plus
-- country_name: a copy, so a later change to the customer's address book moves no parcel.
ALTER TABLE orders ADD COLUMN address jsonb;
-- Who bought it, as they were named then: the receipt and the admin's list show the person
-- who placed the order even after the account is renamed or removed, with no call to the
-- user service per order listed.
ALTER TABLE orders ADD COLUMN customer_email text;
ALTER TABLE orders ADD COLUMN customer_first_name text;
ALTER TABLE orders ADD COLUMN customer_last_name text;

-- The order's payment, as the provider answered it (never the card number). One per order.
-- 'authorising' while the saga waits for the provider (only on orders not placed yet: an
-- order placed has 'authorised' or later). pending_action: a status change's money step
-- not done yet (the provider was unavailable), tried again by recovery.
CREATE TABLE order_payments (
    order_id bigint PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    provider text NOT NULL,
    idempotency_key text NOT NULL,
    status text NOT NULL CHECK (status IN
        ('authorising', 'authorised', 'captured', 'voided', 'refunded', 'failed')),
    reference text,
    brand text,
    last4 text CHECK (last4 ~ '^[0-9]{4}$'),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    pending_action text CHECK (pending_action IN ('capture', 'void', 'refund')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_payments_pending ON order_payments (order_id) WHERE pending_action IS NOT NULL;

-- The built-in test card provider (svc_order/payments.py, TestCardProvider). It stands for an
-- outside system, so it has a schema of its own and no key into the order tables: what it
-- keeps is what a processor would keep, the answer to every idempotency key it was sent and
-- the holds it made.
CREATE SCHEMA test_card_provider;
CREATE TABLE test_card_provider.requests (
    idempotency_key text PRIMARY KEY,
    operation text NOT NULL CHECK (operation IN ('authorise', 'capture', 'void', 'refund')),
    answer jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE test_card_provider.authorisations (
    reference text PRIMARY KEY,
    order_id bigint NOT NULL,  -- the merchant's order reference, as metadata
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    refunded_cents bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    status text NOT NULL DEFAULT 'authorised'
        CHECK (status IN ('authorised', 'captured', 'voided', 'refunded')),
    brand text NOT NULL,
    last4 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
