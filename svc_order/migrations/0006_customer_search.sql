-- The admin's search of orders by customer (GET /api/orders?customer=, /admin/orders) looks
-- for a text anywhere in the customer's e-mail or name, ILIKE '%text%', which no b-tree
-- serves: every search read every order. Trigram indexes (pg_trgm) serve it for a text of
-- three characters or more; the expressions are the ones svc_order/store.py searches.
--
-- pg_trgm is a contrib extension that PostgreSQL's packages, its Docker images and the
-- managed services ship, and a trusted one since PostgreSQL 13 (a role that may create in
-- the database may create it). Where it cannot be created, the service starts all the same
-- and searches by reading every order, as before; it logs why, with this migration's name.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE WARNING 'pg_trgm cannot be created (%): the customer search reads every order',
        SQLERRM;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX orders_customer_email_trgm ON orders
            USING gin (customer_email gin_trgm_ops);
        CREATE INDEX orders_customer_name_trgm ON orders
            USING gin ((customer_first_name || ' ' || customer_last_name) gin_trgm_ops);
    END IF;
END $$;
