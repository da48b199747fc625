CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'shipped', 'delivered', 'cancelled')),
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    -- The checkout saga: 'reserving' while stock is being taken, 'compensating' while it is
    -- being put back after a failure, 'placed' once the order exists for its customer. Only
    -- placed orders are ever shown; the others are finished or undone by recovery once
    -- their lease runs out (see svc_order/checkout.py).
    checkout_state text NOT NULL DEFAULT 'reserving'
        CHECK (checkout_state IN ('reserving', 'compensating', 'placed')),
    lease_until timestamptz NOT NULL,
    idempotency_key text,
    request_hash text NOT NULL,
    -- A cart checkout clears the cart at this version once placed; NULL when done or n/a.
    cart_version bigint,
    -- A cancelled order whose units are not yet back in stock.
    restock_pending boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_by_user ON orders (user_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);
CREATE INDEX orders_unfinished ON orders (lease_until)
    WHERE checkout_state <> 'placed' OR restock_pending OR cart_version IS NOT NULL;

CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id text NOT NULL,
    product_name text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE order_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_history_by_order ON order_history (order_id, id);
