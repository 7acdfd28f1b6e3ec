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
    }

    @Test(
        "bad values are refused, naming the key",
        arguments: [
            ("port: 6432", "port: 70000", "listen.port"),
            ("password_file: secrets/pw", "password: hunter2", "connections.appdb.password"),
            ("password_file: secrets/pw", "user2: x\n    password_file: secrets/pw", "connections.appdb.user2"),
            ("issuer: http://127.0.0.1:9000", "issuer: http://idp.example.com", "identity.issuers[0].issuer"),
            ("audience: custos", "audience: custos\n      algorithms: [HS256]", "identity.issuers[0].algorithms"),
            ("audience: custos", "audience: custos\n      algorithms: [none]", "identity.issuers[0].algorithms"),
            ("clock_skew: 30s", "clock_skew: soon", "identity.clock_skew"),
            ("store: data/custos.sqlite", "store: data/custos.sqlite\n  mode: sometimes", "recording.mode"),
            ("allow_groups: [agents]", "allow_groups: [agents]\n    sslmode: verify-full", "connections.appdb.ca_file"),
            ("allow_cleartext_on_loopback: true", "allow_cleartext_on_loopback: maybe", "listen.allow_cleartext_on_loopback"),
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
