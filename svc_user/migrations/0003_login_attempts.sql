-- Login limits that hold under parallel guesses, at every replica, and per client address
-- (README "Login limits"). An attempt is taken here, atomically, before bcrypt runs, and
-- finished once its answer is known; the per-email table that counted only finished
-- failures gives way.
DROP TABLE login_failures;

-- One row per thing a limit counts: 'account' an email from every address, 'address' one
-- client address over every email, 'pair' an email from one address. The unused part of
-- the key is ''.
CREATE TABLE login_attempts (
    scope text NOT NULL CHECK (scope IN ('account', 'address', 'pair')),
    email text NOT NULL,
    address text NOT NULL,
    -- Failed password checks in this window.
    failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    -- Checks taken and not finished yet (bcrypt running): they count as failures until then.
    pending integer NOT NULL DEFAULT 0 CHECK (pending >= 0),
    window_started_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    PRIMARY KEY (scope, email, address)
);

-- Where each account registered or last logged in successfully: these addresses are let
-- through an account-wide lock (the owner's usual places), never through the other two. Not
-- through the address-wide one either: at an address shared by many (a carrier NAT, an
-- office) a sprayer would then meet only the per-email limit on its neighbours' accounts,
-- and a 401 where every other email gets an instant 429 would tell it which emails are used
-- there, where an unknown email and a wrong password must answer alike. A sprayer there
-- holds everyone behind that address for a lock period; only something the owner's device
-- holds (a device cookie) could tell them apart.
CREATE TABLE login_known_addresses (
    email text NOT NULL,
    address text NOT NULL,
    last_login_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, address)
);

-- The one place that remembers a known address: a successful login, and a registration
-- (which logs in).
CREATE FUNCTION remember_login_address(p_email text, p_address text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO login_known_addresses AS k (email, address) VALUES (p_email, p_address)
    ON CONFLICT (email, address) DO UPDATE SET last_login_at = now();
$$;

-- Take an attempt for p_email from p_address, if every limit lets it through; in one round
-- trip and under row locks, so N guesses at once (at any replicas) get exactly the checks
-- the limits allow. p_free holds the free failures of account, address and pair, in that
-- order. A row that has counted nothing, or whose window has passed unlocked, starts a new
-- window. The answer is one line per scope, whether each refused, and whether it was taken.
CREATE FUNCTION take_login_attempt(
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
        -- the free ones (once past them, one check at a time after each lock ends). An
        -- address the account logged in from lately is not held by the account-wide lock.
        refusals := refusals || (
            NOT (i = 1 AND known)
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

-- Finish an attempt taken above. p_outcome: 'failed' (the password was wrong: it counts, and
-- from the free failures on each one locks for p_lock_seconds, doubling up to
-- p_lock_max_seconds), 'succeeded' (this email from this address starts afresh and becomes a
-- known address; the account's and the address's counts keep what others did), or
-- 'unchecked' (no password was checked, e.g. bcrypt was busy: it counts for nothing).
CREATE FUNCTION finish_login_attempt(
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
