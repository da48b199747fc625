-- The e-mail outbox (svc_order/outbox.py): each e-mail the customer is owed (order placed,
-- shipped, cancelled) is written in the same transaction as the state change it reports, so
-- there is never a change without its e-mail, nor an e-mail of a change that was rolled back.
-- The sender (svc_order/mailer.py) claims due rows with FOR UPDATE SKIP LOCKED, so replicas
-- share the work and never take the same row.
-- Each goes to the order's customer_email (0004: the address the customer checked out
-- with), whoever makes the change (an admin ships it).

CREATE TABLE email_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('placed', 'shipped', 'cancelled')),
    recipient text NOT NULL,
    -- pending: to be sent at due_at; sending: claimed by a sender until lease_until;
    -- sent: the SMTP server accepted it; failed: refused for good, or too many attempts;
    -- unknown: a sender stopped (crash, timeout) after it began handing the message over,
    -- so it may have arrived: never sent again (at most once), and counted.
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
    attempts integer NOT NULL DEFAULT 0,
    due_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    -- One e-mail per event: an order is placed, shipped and cancelled at most once each.
    UNIQUE (order_id, kind)
);
CREATE INDEX email_outbox_due ON email_outbox (due_at) WHERE state = 'pending';
CREATE INDEX email_outbox_sending ON email_outbox (lease_until) WHERE state = 'sending';
