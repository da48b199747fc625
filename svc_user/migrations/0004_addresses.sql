-- Delivery addresses a customer keeps on its profile (at most MAX_ADDRESSES each, checked
-- under the user's row lock). They go with the account. An order copies the one it is sent
-- to, so changing or removing an address never changes an order.
CREATE TABLE addresses (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label text NOT NULL DEFAULT '',
    recipient text NOT NULL,
    line1 text NOT NULL,
    line2 text NOT NULL DEFAULT '',
    city text NOT NULL,
    region text NOT NULL DEFAULT '',
    postal_code text NOT NULL DEFAULT '',
    country text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    phone text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX addresses_by_user ON addresses (user_id, id);
