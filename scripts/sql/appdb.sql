-- Sample schema for database appdb, loaded by pg_start (scripts/lib/common.sh)
-- as the postgres superuser. Data is deterministic (arithmetic on the row
-- number, no random()) so tests may assert exact values, and PII-shaped so
-- masking detectors have something real to find: card numbers pass Luhn,
-- IBANs pass mod 97, SSNs avoid the never-issued ranges, phones use the
-- fictional 555-01xx block, emails use the reserved example.* domains.

\set ON_ERROR_STOP on

CREATE FUNCTION pg_temp.luhn_complete(partial text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    total int := 0;
    digit int;
    -- The check digit will be appended, so the rightmost digit here is doubled.
    double boolean := true;
BEGIN
    FOR i IN REVERSE length(partial)..1 LOOP
        digit := substr(partial, i, 1)::int;
        IF double THEN
            digit := digit * 2;
            IF digit > 9 THEN digit := digit - 9; END IF;
        END IF;
        total := total + digit;
        double := NOT double;
    END LOOP;
    RETURN partial || ((10 - total % 10) % 10)::text;
END $$;

CREATE FUNCTION pg_temp.german_iban(bban text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    -- ISO 13616: move "DE00" to the end, letters to numbers (D=13, E=14).
    SELECT 'DE' || lpad((98 - ((bban || '131400')::numeric % 97))::int::text, 2, '0') || bban
$$;

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text,
    ssn         text,
    card_number text,
    iban        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount      numeric(10, 2) NOT NULL,
    currency    text NOT NULL DEFAULT 'EUR',
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

-- Target for COPY FROM STDIN tests; a few rows so COPY TO has output too.
CREATE TABLE events_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    source  text NOT NULL,
    level   text NOT NULL,
    message text NOT NULL,
    payload jsonb
);

WITH names AS (
    SELECT ARRAY['Olivia','Liam','Emma','Noah','Ava','Elijah','Sophia','Mateo','Isabella','Lucas',
                 'Mia','Amelia','Hannah','Jonas','Leonie','Felix','Chloe','Hugo','Sara','Yusuf'] AS first,
           ARRAY['Smith','Johnson','Garcia','Miller','Davis','Martinez','Lopez','Wilson','Anderson','Thomas',
                 'Moore','Jackson','Martin','Lee','Schmidt','Schneider','Fischer','Dubois','Rossi','Novak'] AS last
), rows AS (
    SELECT g,
           names.first[1 + g % 20] AS first,
           names.last[1 + (g / 20 + g * 3) % 20] AS last
    FROM generate_series(1, 200) AS g, names
)
INSERT INTO customers (full_name, email, phone, ssn, card_number, iban, created_at)
SELECT first || ' ' || last,
       lower(first || '.' || last || g) || CASE WHEN g % 2 = 0 THEN '@example.com' ELSE '@example.org' END,
       '+1-202-555-01' || lpad((g % 100)::text, 2, '0'),
       lpad((100 + (g * 37) % 565)::text, 3, '0') || '-' ||
           lpad((1 + (g * 13) % 99)::text, 2, '0') || '-' ||
           lpad((1 + (g * 7919) % 9999)::text, 4, '0'),
       pg_temp.luhn_complete('4' || lpad(((g::bigint * 982451653) % 100000000000000)::text, 14, '0')),
       pg_temp.german_iban(lpad((10000000 + (g * 7127) % 89999999)::text, 8, '0')
                           || lpad(((g::bigint * 104729) % 10000000000)::text, 10, '0')),
       timestamptz '2025-01-01 00:00:00+00' + g * interval '37 hours'
FROM rows
ORDER BY g;

INSERT INTO orders (customer_id, amount, currency, status, created_at)
SELECT 1 + (g * 7) % 200,
       5 + ((g * 1237) % 50000) / 100.0,
       (ARRAY['EUR','USD','GBP'])[1 + g % 3],
       (ARRAY['pending','paid','shipped','refunded'])[1 + g % 4],
       timestamptz '2025-02-01 00:00:00+00' + g * interval '11 hours'
FROM generate_series(1, 600) AS g;

INSERT INTO events_log (at, source, level, message, payload)
SELECT timestamptz '2025-03-01 00:00:00+00' + g * interval '1 minute',
       (ARRAY['billing','auth','shipping'])[1 + g % 3],
       (ARRAY['info','warn','error'])[1 + g % 3],
       'sample event ' || g,
       jsonb_build_object('n', g, 'ok', g % 3 <> 2)
FROM generate_series(1, 50) AS g;

GRANT USAGE, CREATE ON SCHEMA public TO custos_scram, custos_md5, custos_plain;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public
    TO custos_scram, custos_md5, custos_plain;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public
    TO custos_scram, custos_md5, custos_plain;

ANALYZE;
