-- Operational metadata of each certificate next to its serial, so that
-- list-certs selects a page with SQL and decrypts only that page's records.
--
-- sort_key is the serial without leading zeros, left-padded with zeros to
-- 40 hex digits, so that text order is numeric order. profile, revoked and
-- common_name (lowercased, for the substring filter) describe leaves; rows
-- signed by '@root' leave profile and common_name NULL. Rows stored
-- before this migration have indexed = 0: the migration runs while sealed
-- and cannot read their encrypted records, so keyd fills profile, revoked
-- and common_name when it loads the mount after unseal, and list-certs reads the
-- records themselves while any row of the mount has indexed = 0.
ALTER TABLE ca_cert_serials ADD COLUMN sort_key TEXT NOT NULL DEFAULT '';
ALTER TABLE ca_cert_serials ADD COLUMN profile TEXT;
ALTER TABLE ca_cert_serials ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ca_cert_serials ADD COLUMN common_name TEXT;
ALTER TABLE ca_cert_serials ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0;

UPDATE ca_cert_serials
    SET sort_key = substr('0000000000000000000000000000000000000000' || ltrim(serial, '0'), -40);
UPDATE ca_cert_serials SET indexed = 1 WHERE issuer = '@root';

CREATE INDEX ca_cert_serials_by_serial ON ca_cert_serials (scope, sort_key);
CREATE INDEX ca_cert_serials_by_issuer ON ca_cert_serials (scope, issuer, sort_key);
CREATE INDEX ca_cert_serials_by_profile ON ca_cert_serials (scope, profile, sort_key);
CREATE INDEX ca_cert_serials_by_revoked ON ca_cert_serials (scope, revoked, sort_key);
CREATE INDEX ca_cert_serials_by_expiry ON ca_cert_serials (scope, not_after);
CREATE INDEX ca_cert_serials_unindexed ON ca_cert_serials (scope) WHERE indexed = 0;
