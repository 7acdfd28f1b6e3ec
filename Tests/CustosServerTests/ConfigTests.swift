import Foundation
import Testing

@testable import CustosServer

@Suite("Configuration")
struct ConfigTests {
    static let valid = """
        listen:
          host: 127.0.0.1
          port: 6432
          allow_cleartext_on_loopback: true
        identity:
          clock_skew: 30s
          issuers:
            - issuer: http://127.0.0.1:9000
              audience: custos
        connections:
          appdb:
            host: 127.0.0.1
            port: 5432
            user: gw
            password_file: secrets/pw
            allow_groups: [agents]
        recording:
          store: data/custos.sqlite
        """

    @Test("a valid file loads, resolving relative paths against the config's folder")
    func valid() throws {
        let config = try CustosConfig.parse(yaml: Self.valid, baseDirectory: "/etc/custos")
        #expect(config.recording.store == "/etc/custos/data/custos.sqlite")
        #expect(config.connections.first?.password == .file("/etc/custos/secrets/pw"))
        #expect(config.connections.first?.database == "appdb")
        #expect(config.identity.clockSkew == 30)
        #expect(config.identity.issuers.first?.algorithms == ["RS256", "ES256"])
        #expect(config.recording.mode == .writeAhead)
        #expect(config.recording.checkpointEvery == 1000)
        #expect(config.recording.checkpointInterval == 60)
        #expect(config.recording.retention == nil)
        #expect(config.keys.signingFile == "/etc/custos/data/custos-signing.key")
    }

    @Test("a connection's backend pool: off by default, on with a size")
    func pool() throws {
        let off = try CustosConfig.parse(yaml: Self.valid, baseDirectory: "/")
        #expect(try off.connections[0].target(password: "pw").pool == nil)
        let yaml = Self.valid.replacingOccurrences(of: "allow_groups: [agents]", with: "allow_groups: [agents]\n    pool: {size: 8, idle_timeout: 2m}")
        let pool = try #require(try CustosConfig.parse(yaml: yaml, baseDirectory: "/").connections[0].target(password: "pw").pool)
        #expect(pool.size == 8)
        #expect(pool.idleTimeout.nanoseconds == 120_000_000_000)
    }

    @Test("YAML that Yams's own loader traps on is a configuration error (found by scripts/fuzz)")
    func hostileYAML() {
        for yaml in ["? [1, 2]\n: x\n", "listen: {? {a: 1} : 2}\n", String(repeating: "[", count: 500), "a: &x 1\nb: *x\n", "a: 999999999999999999:59\n"] {
            #expect(throws: ConfigError.self) { try CustosConfig.parse(yaml: yaml, baseDirectory: "/") }
        }
    }

    @Test("evidence settings: checkpoints, retention and the signing key")
    func evidence() throws {
        let yaml = Self.valid.replacingOccurrences(
            of: "store: data/custos.sqlite", with: "store: data/custos.sqlite\n  checkpoint_every: 50\n  checkpoint_interval: 5s\n  retention: 90d")
            + "\nkeys:\n  signing_file: keys/sign.key\n"
        let config = try CustosConfig.parse(yaml: yaml, baseDirectory: "/etc/custos")
        #expect(config.recording.checkpointEvery == 50)
        #expect(config.recording.checkpointInterval == 5)
        #expect(config.recording.retention == TimeInterval(90 * 86400))
        #expect(config.keys.signingFile == "/etc/custos/keys/sign.key")
    }

    @Test(
        "bad values are refused, naming the key",
        arguments: [
            ("port: 6432", "port: 70000", "listen.port"),
            ("port: 6432", "port: 999999999999999999:59", "listen.port"),
            ("password_file: secrets/pw", "password: hunter2", "connections.appdb.password"),
            ("password_file: secrets/pw", "user2: x\n    password_file: secrets/pw", "connections.appdb.user2"),
            ("issuer: http://127.0.0.1:9000", "issuer: http://idp.example.com", "identity.issuers[0].issuer"),
            ("audience: custos", "audience: custos\n      algorithms: [HS256]", "identity.issuers[0].algorithms"),
            ("audience: custos", "audience: custos\n      algorithms: [none]", "identity.issuers[0].algorithms"),
            ("clock_skew: 30s", "clock_skew: soon", "identity.clock_skew"),
            ("clock_skew: 30s", "clock_skew: infs", "identity.clock_skew"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  retention: 1e300s", "recording.retention"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  retention: 36501d", "recording.retention"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  mode: sometimes", "recording.mode"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    sslmode: verify-full", "connections.appdb.ca_file"),
            ("allow_cleartext_on_loopback: true", "allow_cleartext_on_loopback: maybe", "listen.allow_cleartext_on_loopback"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  retention: 0s", "recording.retention"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  retention: forever", "recording.retention"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  checkpoint_every: 0", "recording.checkpoint_every"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  checkpoint_interval: 10ms", "recording.checkpoint_interval"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    pool: {size: -1}", "connections.appdb.pool.size"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    pool: {size: 5, idle_timeout: 10ms}", "connections.appdb.pool.idle_timeout"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    pool: {size: 5, max: 9}", "connections.appdb.pool.max"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    pool: 5", "connections.appdb.pool"),
        ])
    func refused(replacing: String, with: String, key: String) {
        let yaml = Self.valid.replacingOccurrences(of: replacing, with: with)
        #expect(yaml != Self.valid)
        #expect(throws: ConfigError.self) { try CustosConfig.parse(yaml: yaml, baseDirectory: "/") }
        do {
            _ = try CustosConfig.parse(yaml: yaml, baseDirectory: "/")
        } catch {
            #expect(error.key == key, "\(error)")
        }
    }

    @Test("missing sections are named")
    func missing() {
        #expect(throws: ConfigError(key: "connections", problem: "at least one connection is required")) {
            try CustosConfig.parse(yaml: "identity:\n  issuers:\n    - issuer: https://idp.example\n      audience: a\n", baseDirectory: "/")
        }
        #expect(throws: ConfigError.self) { try CustosConfig.parse(yaml: "listen: [", baseDirectory: "/") }
    }

    @Test("a password from a missing environment variable is refused by key")
    func secretSources() throws {
        let yaml = Self.valid.replacingOccurrences(of: "password_file: secrets/pw", with: "password_env: CUSTOS_TEST_SURELY_UNSET")
        let config = try CustosConfig.parse(yaml: yaml, baseDirectory: "/")
        #expect(throws: ConfigError.self) { try config.password(of: config.connections[0]) }
    }

    @Test("durations")
    func durations() {
        #expect(ConfigReader.parseDuration("500ms") == 0.5)
        #expect(ConfigReader.parseDuration("2m") == 120)
        #expect(ConfigReader.parseDuration("1h") == 3600)
        #expect(ConfigReader.parseDuration("7d") == 604_800)
        #expect(ConfigReader.parseDuration("-1s") == nil)
        #expect(ConfigReader.parseDuration("abc") == nil)
    }
}

@Suite("Policy configuration")
struct PolicyConfigTests {
    static let policy = """

        policy:
          default_message: nope
          rules:
            - name: deny-flagged
              match: {flags: [destructive, privileged, opaque, unparseable]}
              action: deny
              message: not through Custos
            - name: agents-read
              match: {groups: [agents], connections: [appdb], read_only: true, time: {days: [mon, fri], from: "09:00", to: "18:00", timezone: Europe/Berlin}}
              action: allow
              limits: {max_rows: 1000, statement_timeout: 30s, rate: 2.5}
            - name: agents-write
              match: {groups: [agents], kinds: [INSERT, update]}
              action: review
        """

    @Test("rules load in order with their conditions and limits")
    func loads() throws {
        let config = try CustosConfig.parse(yaml: ConfigTests.valid + Self.policy, baseDirectory: "/")
        let policy = try #require(config.policy)
        #expect(policy.rules.map(\.name) == ["deny-flagged", "agents-read", "agents-write"])
        #expect(policy.defaultMessage == "nope")
        #expect(policy.rules[0].flags?.count == 4)
        #expect(policy.rules[1].limits.maxRows == 1000)
        #expect(policy.rules[1].limits.statementTimeout == .seconds(30))
        #expect(policy.rules[1].limits.ratePerSecond == 2.5)
        #expect(policy.rules[1].time?.weekdays == [1, 5])
        #expect(policy.rules[2].kinds == ["insert", "update"])
        #expect(try CustosConfig.parse(yaml: ConfigTests.valid, baseDirectory: "/").policy == nil)
    }

    @Test(
        "bad rules are refused, naming the key",
        arguments: [
            ("action: review", "action: maybe", "policy.rules[2].action"),
            ("[INSERT, update]", "[]", "policy.rules[2].match.kinds"),
            ("unparseable]", "unparsable]", "policy.rules[0].match.flags"),
            ("rate: 2.5", "rate: -1", "policy.rules[1].limits.rate"),
            ("from: \"09:00\"", "from: \"9am\"", "policy.rules[1].match.time.from"),
            ("Europe/Berlin", "Mars/Olympus", "policy.rules[1].match.time.timezone"),
            ("name: agents-write", "name: agents-read", "policy.rules[2].name"),
            ("action: review", "action: review\n      limits: {max_rows: 1}", "policy.rules[2].limits"),
            ("match: {groups: [agents], kinds", "match: {group: [agents], kinds", "policy.rules[2].match.group"),
        ])
    func refused(replacing: String, with: String, key: String) {
        let yaml = (ConfigTests.valid + Self.policy).replacingOccurrences(of: replacing, with: with)
        #expect(yaml != ConfigTests.valid + Self.policy)
        do {
            _ = try CustosConfig.parse(yaml: yaml, baseDirectory: "/")
            Issue.record("accepted a bad policy (\(key))")
        } catch {
            #expect(error.key == key, "\(error)")
        }
    }
}
