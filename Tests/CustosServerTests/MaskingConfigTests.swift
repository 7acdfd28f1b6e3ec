import CustosCore
import Foundation
import Testing

@testable import CustosServer

@Suite("Masking configuration and keys")
struct MaskingConfigTests {
    static func config(masking: String) -> String {
        ConfigTests.valid + """

            policy:
              rules:
                - {name: reads, match: {read_only: true}, action: allow}
              masking:
            \(masking)
            """
    }

    @Test("masking rules load in order; keys default beside the store")
    func loads() throws {
        let config = try CustosConfig.parse(
            yaml: Self.config(
                masking: """
                      - name: auditors
                        match: {groups: [auditors]}
                        columns: {customers.ssn: partial}
                      - name: agents
                        columns: {Customers.Email: hash, public.customers.ssn: redact}
                        column_names: {"*password*": redact, "token": "null"}
                        detectors: [email, card]
                    """), baseDirectory: "/etc/custos")
        let masking = try #require(config.policy?.masking)
        #expect(masking.rules.map(\.name) == ["auditors", "agents"])
        #expect(masking.rules[1].columns == ["customers.email": .hash, "public.customers.ssn": .redact])
        #expect(masking.rules[1].columnNames.map(\.pattern) == ["token", "*password*"], "exact names before patterns")
        #expect(masking.rules[1].detectors == [.email: .redact, .card: .redact])
        #expect(config.keys.digestFile == "/etc/custos/data/custos-digest.key")
        #expect(config.keys.maskingFile == "/etc/custos/data/custos-masking.key")
        #expect(config.recording.sampleRows == 20)
        let without = try CustosConfig.parse(yaml: Self.config(masking: "    []"), baseDirectory: "/etc/custos")
        #expect(without.policy?.version != config.policy?.version, "masking is part of the policy's version")
    }

    @Test(
        "bad masking rules are refused, naming the key",
        arguments: [
            ("  - {name: a, columns: {email: hash}}", "policy.masking[0].columns"),
            ("  - {name: a, columns: {customers.email: scramble}}", "policy.masking[0].columns.customers.email"),
            ("  - {name: a, detectors: [email, dna]}", "policy.masking[0].detectors"),
            ("  - {name: a, match: {groups: []}}", "policy.masking[0].match.groups"),
            ("  - {name: a, colums: {}}", "policy.masking[0].colums"),
            ("  - {name: a}\n  - {name: a}", "policy.masking[1].name"),
        ])
    func refused(masking: String, key: String) {
        let yaml = Self.config(masking: masking.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
        #expect {
            try CustosConfig.parse(yaml: yaml, baseDirectory: "/etc/custos")
        } throws: { error in
            (error as? ConfigError)?.key == key
        }
    }

    @Test("a key file is created with mode 0600 and read back; one others may read is refused")
    func keyFiles() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("custos-keys-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/k.key"
        let first = try KeyFile.load(path: path, key: "keys.digest_file")
        #expect(first.created)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
        let again = try KeyFile.load(path: path, key: "keys.digest_file")
        #expect(!again.created)
        #expect(again.key == first.key)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: path)
        #expect {
            try KeyFile.load(path: path, key: "keys.digest_file")
        } throws: { error in
            (error as? ConfigError)?.key == "keys.digest_file"
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        try "not a key\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: ConfigError.self) { try KeyFile.load(path: path, key: "keys.digest_file") }
    }
}
