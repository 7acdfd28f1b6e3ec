/// Privileges, roles, server configuration, administrative functions, and opaque code.
enum CorpusPrivileged {
    static let cases: [CorpusCase] = [
        // GRANT / REVOKE
        c("GRANT SELECT ON t TO bob", "grant", w: ["t"], flags: [.privileged]),
        c("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO bob", "grant", flags: [.privileged]),
        c("REVOKE INSERT ON s.t FROM bob", "revoke", w: ["s.t"], flags: [.privileged]),
        c("GRANT USAGE ON SCHEMA app TO agents", "grant", flags: [.privileged]),
        c("GRANT admin TO bob WITH ADMIN OPTION", "grant_role", flags: [.privileged]),
        c("REVOKE admin FROM bob", "revoke_role", flags: [.privileged]),
        c("ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO bob", "alter_default_privileges", flags: [.privileged]),
        // Roles
        c("CREATE ROLE agent LOGIN PASSWORD 'secret'", "create_role", flags: [.privileged]),
        c("CREATE USER u WITH SUPERUSER", "create_role", flags: [.privileged]),
        c("ALTER ROLE agent PASSWORD 'new'", "alter_role", flags: [.privileged]),
        c("ALTER USER bob WITH SUPERUSER CREATEROLE", "alter_role", flags: [.privileged]),
        c("ALTER ROLE bob SET search_path = app", "alter_role_set", flags: [.privileged]),
        c("DROP ROLE bob", "drop_role", flags: [.privileged, .destructive]),
        c("DROP USER IF EXISTS bob, carol", "drop_role", flags: [.privileged, .destructive]),
        c("REASSIGN OWNED BY a TO b", "reassign_owned", flags: [.privileged]),
        c("DROP OWNED BY a", "drop_owned", flags: [.privileged, .destructive]),
        c("ALTER SCHEMA app OWNER TO bob", "alter_owner", flags: [.privileged]),
        c("ALTER TABLE t OWNER TO bob", "alter_table", w: ["t"], flags: [.privileged]),
        c("ALTER TABLE t DISABLE ROW LEVEL SECURITY", "alter_table", w: ["t"], flags: [.privileged]),
        c("ALTER TABLE t DISABLE TRIGGER ALL", "alter_table", w: ["t"], flags: [.privileged]),
        c("ALTER DATABASE appdb SET role = 'admin'", "alter_database_set", flags: [.privileged]),
        // Identity switches
        c("SET ROLE admin", "set", flags: [.privileged]),
        c("SET LOCAL ROLE admin", "set", flags: [.privileged]),
        c("SET ROLE NONE", "set", flags: [.privileged]),
        c("RESET ROLE", "reset", flags: [.privileged]),
        c("SET SESSION AUTHORIZATION 'postgres'", "set", flags: [.privileged]),
        c("SET SESSION AUTHORIZATION DEFAULT", "set", flags: [.privileged]),
        c("RESET SESSION AUTHORIZATION", "reset", flags: [.privileged]),
        c(#"set "Role" = 'admin'"#, "set", flags: [.privileged]),
        c("SET session_replication_role = replica", "set", flags: [.privileged]),
        // Server configuration and code loading
        c("ALTER SYSTEM SET max_connections = 10", "alter_system", flags: [.privileged]),
        c("ALTER SYSTEM RESET ALL", "alter_system", flags: [.privileged]),
        c("CREATE EXTENSION dblink", "create_extension", flags: [.privileged]),
        c("CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA public", "create_extension", flags: [.privileged]),
        c("ALTER EXTENSION pgcrypto UPDATE", "alter_extension", flags: [.privileged]),
        c("LOAD 'auto_explain'", "load", flags: [.privileged]),
        c("CHECKPOINT", "checkpoint", flags: [.privileged]),
        // The grammar turns CREATE LANGUAGE without a handler into CREATE EXTENSION.
        c("CREATE LANGUAGE plperlu", "create_extension", flags: [.privileged]),
        c("CREATE TRUSTED LANGUAGE plsample HANDLER plsample_call_handler", "create_language", flags: [.privileged]),
        c("CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()", "create_event_trigger", flags: [.privileged]),
        c("CREATE TABLESPACE ts LOCATION '/data/ts'", "create_tablespace", flags: [.privileged]),
        c("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'evil')", "create_foreign_server", flags: [.privileged]),
        c("CREATE USER MAPPING FOR bob SERVER s OPTIONS (password 'x')", "create_user_mapping", flags: [.privileged]),
        // Administrative and file functions, wherever they are called
        c("SELECT pg_terminate_backend(123)", "select", f: ["pg_terminate_backend"], flags: [.privileged]),
        c(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'x'", "select", r: ["pg_stat_activity"],
            f: ["pg_cancel_backend"], flags: [.privileged]
        ),
        c("SELECT pg_reload_conf()", "select", f: ["pg_reload_conf"], flags: [.privileged]),
        c("SELECT pg_rotate_logfile()", "select", f: ["pg_rotate_logfile"], flags: [.privileged]),
        c("SELECT pg_read_file('/etc/passwd')", "select", f: ["pg_read_file"], flags: [.privileged]),
        c("SELECT pg_read_binary_file('global/pg_control', 0, 100)", "select", f: ["pg_read_binary_file"], flags: [.privileged]),
        c("SELECT * FROM pg_ls_dir('.')", "select", f: ["pg_ls_dir"], flags: [.privileged]),
        c("SELECT pg_stat_file('postgresql.conf')", "select", f: ["pg_stat_file"], flags: [.privileged]),
        c("SELECT lo_import('/etc/passwd')", "select", f: ["lo_import"], flags: [.privileged]),
        c("SELECT lo_export(16385, '/tmp/x')", "select", f: ["lo_export"], flags: [.privileged]),
        c("SELECT * FROM dblink('host=evil', 'SELECT 1') AS t(x int)", "select", f: ["dblink"], flags: [.privileged]),
        c("SELECT dblink_exec('conn', 'DROP TABLE users')", "select", f: ["dblink_exec"], flags: [.privileged]),
        c("SELECT pg_promote()", "select", f: ["pg_promote"], flags: [.privileged]),
        c("SELECT pg_switch_wal()", "select", f: ["pg_switch_wal"], flags: [.privileged]),
        c("SELECT pg_stat_reset()", "select", f: ["pg_stat_reset"], flags: [.privileged]),
        c("SELECT pg_file_write('x', 'y', false)", "select", f: ["pg_file_write"], flags: [.privileged]),
        c("SELECT pg_catalog.pg_read_file('x')", "select", f: ["pg_catalog.pg_read_file"], flags: [.privileged]),
        c("SELECT PG_READ_FILE('x')", "select", f: ["pg_read_file"], flags: [.privileged]),
        c(#"SELECT "pg_read_file"('x')"#, "select", f: ["pg_read_file"], flags: [.privileged]),
        c(
            "SELECT * FROM users WHERE id = (SELECT pg_terminate_backend(1)::int)", "select", r: ["users"],
            f: ["pg_terminate_backend"], flags: [.privileged]
        ),
        c(
            "WITH x AS (SELECT lo_import('/etc/shadow')) SELECT * FROM x", "select", f: ["lo_import"], flags: [.privileged]
        ),
        c("INSERT INTO t SELECT pg_read_file('/etc/passwd')", "insert", w: ["t"], f: ["pg_read_file"], flags: [.privileged]),
        // set_config: privileged for role settings and for any name that is not a literal
        c("SELECT set_config('role', 'admin', false)", "select", f: ["set_config"], flags: [.privileged]),
        c("SELECT set_config('ROLE', 'admin', false)", "select", f: ["set_config"], flags: [.privileged]),
        c("SELECT set_config('session_authorization', 'postgres', false)", "select", f: ["set_config"], flags: [.privileged]),
        read("SELECT set_config('search_path', 'public', false)", f: ["set_config"]),
        // (and, since they may name a setting that changes how the backend lexes, lexing too)
        c("SELECT set_config($1, 'x', false)", "select", f: ["set_config"], flags: [.privileged, .lexing]),
        c(
            "SELECT set_config(current_setting('my.name'), 'y', false)", "select", f: ["set_config", "current_setting"],
            flags: [.privileged, .lexing]
        ),
        c("SELECT set_config('ro' || 'le', 'admin', false)", "select", f: ["set_config"], flags: [.privileged, .lexing]),
        c("SELECT pg_catalog.set_config(name => 'role')", "select", f: ["pg_catalog.set_config"], flags: [.privileged, .lexing]),
        // pg_settings' update rule calls set_config: any setting, the role and lexing ones included
        c(
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'", "update", w: ["pg_settings"],
            flags: [.privileged, .lexing]
        ),
        c("UPDATE pg_catalog.pg_settings SET setting = 'admin' WHERE name = 'role'", "update", w: ["pg_catalog.pg_settings"], flags: [.privileged, .lexing]),
        // Opaque: code the parser cannot see into
        c("DO $$ BEGIN DELETE FROM t; END $$", "do", flags: [.opaque]),
        c("DO LANGUAGE plpgsql $body$ BEGIN EXECUTE 'DROP TABLE t'; END $body$", "do", flags: [.opaque]),
        c("CALL my_proc(1)", "call", f: ["my_proc"], flags: [.opaque]),
        c("CALL s.proc()", "call", f: ["s.proc"], flags: [.opaque]),
        c("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", "create_function", flags: [.opaque]),
        c("CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN DELETE FROM t; END $$", "create_procedure", flags: [.opaque]),
        // A SQL-standard body is one statement, however many semicolons it holds.
        c(
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END", "create_function",
            flags: [.opaque]
        ),
        c("SELECT query_to_xml('select * from secrets', true, true, '')", "select", f: ["query_to_xml"], flags: [.opaque]),
        c("SELECT * FROM ts_stat('SELECT body FROM docs')", "select", f: ["ts_stat"], flags: [.opaque]),
    ]
}
