-- Known pairs (README "Login limits"): an account and an address it logged in or registered
-- from within the known-address period. 0003 let them through the account-wide lock only,
-- and only after a login: a customer who had just registered had none, so 100 failures from
-- 20 strangers' addresses held it everywhere; and 30 wrong guesses over any emails from a
-- shared address (a carrier NAT, an office) held every account there, its regular users'
-- included. Now registering remembers its address as a login does (remember_login_address,
-- the one place that does), and a known pair passes the address-wide lock as well. It never
-- passes its own limit, this email from this address: guessing an account from its owner's
-- own address is limited as before. Its failures still count toward the account's and the
-- address's limits, so strangers stay held by them.
--
-- What this gives an attacker, honestly: something only on accounts known at its own address.
-- Alone there, those are accounts it logged in to or registered itself: it has their
-- passwords. At a shared address they are also its neighbours' accounts, and there the
-- address-wide limit no longer caps how many of them it tries (and a 401 where every other
-- email gets an instant 429 tells it which emails those are). Each such account still meets
-- the pair limit: 5 failures a window, then locks doubling up to 15 minutes, which is what any
-- one address gets at any one account anyway, so guessing one account gains nothing; what
-- is lost is the cap of 30 a window on spraying a few common passwords over the accounts
-- that are used from that same shared address. We take that over letting anyone behind a
-- NAT lock every customer behind it out: an address cannot tell an owner from a neighbour,
-- only something the owner's device holds could (a device cookie, not done here).

CREATE FUNCTION remember_login_address(p_email text, p_address text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO login_known_addresses AS k (email, address) VALUES (p_email, p_address)
    ON CONFLICT (email, address) DO UPDATE SET last_login_at = now();
$$;

-- As in 0003, but a known pair is held by neither the account-wide nor the address-wide lock.
CREATE OR REPLACE FUNCTION take_login_attempt(
    p_email text,
    p_address text,
    p_free integer[],
    p_window_seconds double precision,
    p_known_seconds double precision
) RETURNS TABLE (
    scope text,
    failures integer,
    pending integer,
    locked_seconds double precision,
    refused boolean,
    taken boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    scopes constant text[] := ARRAY['account', 'address', 'pair'];
    emails constant text[] := ARRAY[p_email, '', p_email];
    addresses constant text[] := ARRAY['', p_address, p_address];
    known boolean;
    row_of login_attempts;
    rows_of login_attempts[] := '{}';
    refusals boolean[] := '{}';
    any_refused boolean := false;
    i integer;
BEGIN
    SELECT EXISTS (
        SELECT 1 FROM login_known_addresses k
        WHERE k.email = p_email AND k.address = p_address
          AND k.last_login_at > now() - make_interval(secs => p_known_seconds)
    ) INTO known;
    -- Always in the order account, address, pair: every take and finish locks at most one
    -- row of each scope in this order, so two of them never wait for each other in a cycle.
    FOR i IN 1..3 LOOP
        INSERT INTO login_attempts AS a (scope, email, address)
        VALUES (scopes[i], emails[i], addresses[i])
        ON CONFLICT ON CONSTRAINT login_attempts_pkey DO UPDATE SET
            failures = CASE WHEN a.window_started_at < now() - make_interval(secs => p_window_seconds)
                             AND coalesce(a.locked_until <= now(), true)
                            THEN 0 ELSE a.failures END,
            pending = CASE WHEN a.window_started_at < now() - make_interval(secs => p_window_seconds)
                            AND coalesce(a.locked_until <= now(), true)
                           THEN 0 ELSE a.pending END,
            window_started_at = CASE
                WHEN (a.failures = 0 AND a.pending = 0)
                  OR (a.window_started_at < now() - make_interval(secs => p_window_seconds)
                      AND coalesce(a.locked_until <= now(), true))
                THEN now() ELSE a.window_started_at END
        RETURNING a.* INTO row_of;
        rows_of := rows_of || row_of;
        -- Refused while locked, or while the failures so far and the checks under way reach
        -- the free ones (once past them, one check at a time after each lock ends). A known
        -- pair is held by neither the account-wide nor the address-wide lock, only by its
        -- own (see the head of this file for why that is safe enough).
        refusals := refusals || (
            NOT (i IN (1, 2) AND known)
            AND (coalesce(row_of.locked_until > now(), false)
                 OR row_of.failures + row_of.pending >= greatest(p_free[i], row_of.failures + 1))
        );
        any_refused := any_refused OR refusals[i];
    END LOOP;
    IF NOT any_refused THEN
        FOR i IN 1..3 LOOP
            UPDATE login_attempts a SET pending = a.pending + 1
            WHERE a.scope = scopes[i] AND a.email = emails[i] AND a.address = addresses[i];
        END LOOP;
    END IF;
    FOR i IN 1..3 LOOP
        scope := scopes[i];
        failures := rows_of[i].failures;
        pending := rows_of[i].pending + CASE WHEN any_refused THEN 0 ELSE 1 END;
        locked_seconds := greatest(
            coalesce(extract(epoch FROM rows_of[i].locked_until - now()), 0), 0);
        refused := refusals[i];
        taken := NOT any_refused;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- As in 0003, remembering the address through remember_login_address.
CREATE OR REPLACE FUNCTION finish_login_attempt(
    p_email text,
    p_address text,
    p_outcome text,
    p_free integer[],
    p_lock_seconds double precision,
    p_lock_max_seconds double precision
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    scopes constant text[] := ARRAY['account', 'address', 'pair'];
    emails constant text[] := ARRAY[p_email, '', p_email];
    addresses constant text[] := ARRAY['', p_address, p_address];
    i integer;
BEGIN
    IF p_outcome NOT IN ('failed', 'succeeded', 'unchecked') THEN
        RAISE EXCEPTION 'unknown login outcome %', p_outcome;
    END IF;
    FOR i IN 1..3 LOOP  -- the same order as take_login_attempt
        IF p_outcome = 'succeeded' AND scopes[i] = 'pair' THEN
            DELETE FROM login_attempts a
            WHERE a.scope = 'pair' AND a.email = p_email AND a.address = p_address;
        ELSIF p_outcome = 'failed' THEN
            UPDATE login_attempts a SET
                pending = greatest(a.pending - 1, 0),
                failures = a.failures + 1,
                locked_until = CASE WHEN a.failures + 1 >= p_free[i] THEN greatest(
                    a.locked_until,
                    now() + make_interval(secs => least(
                        p_lock_max_seconds,
                        p_lock_seconds * 2 ^ least(a.failures + 1 - p_free[i], 30))))
                    ELSE a.locked_until END
            WHERE a.scope = scopes[i] AND a.email = emails[i] AND a.address = addresses[i];
        ELSE
            UPDATE login_attempts a SET pending = greatest(a.pending - 1, 0)
            WHERE a.scope = scopes[i] AND a.email = emails[i] AND a.address = addresses[i];
        END IF;
    END LOOP;
    IF p_outcome = 'succeeded' THEN
        PERFORM remember_login_address(p_email, p_address);
    END IF;
END;
$$;
