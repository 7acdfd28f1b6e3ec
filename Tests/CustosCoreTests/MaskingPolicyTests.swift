import Foundation
import Testing

@testable import CustosCore

@Suite("Masking policy")
struct MaskingPolicyTests {
    static func identity(_ subject: String, email: String? = nil, groups: [String] = []) -> Identity {
        Identity(subject: subject, email: email, groups: groups, issuer: "i", tokenID: nil, expiresAt: .distantFuture)
    }

    static let policy = MaskingPolicy(rules: [
        MaskingRule(name: "auditor", subjects: ["auditor@example.com"], detectors: [.card: .partial]),
        MaskingRule(name: "support", groups: ["support", "helpdesk"], connections: ["appdb"], columns: ["customers.email": .partial]),
        MaskingRule(name: "agents", groups: ["agents"], detectors: [.email: .redact, .secret: .redact]),
        MaskingRule(name: "sub-1", subjects: ["sub-1"], columnNames: [ColumnNamePattern(pattern: "*token*", strategy: .redact)]),
    ])

    @Test("the first rule matching identity and connection gives the profile; none matching masks nothing")
    func firstMatch() {
        let auditor = Self.policy.profile(for: Self.identity("x", email: "auditor@example.com", groups: ["support"]), connection: "appdb")
        #expect(auditor.rule == "auditor")
        #expect(auditor.detectors == [.card: .partial])
        let support = Self.policy.profile(for: Self.identity("s", groups: ["helpdesk", "agents"]), connection: "appdb")
        #expect(support.rule == "support")
        #expect(support.hasColumnRules && !support.isEmpty)
        // Another connection skips the support rule and falls to the agents rule.
        #expect(Self.policy.profile(for: Self.identity("s", groups: ["helpdesk", "agents"]), connection: "other").rule == "agents")
        #expect(Self.policy.profile(for: Self.identity("sub-1"), connection: "other").rule == "sub-1")
        let nobody = Self.policy.profile(for: Self.identity("nobody", groups: ["dba"]), connection: "appdb")
        #expect(nobody == .none && nobody.isEmpty && !nobody.hasColumnRules && nobody.rule == nil)
        #expect(MaskingPolicy().profile(for: Self.identity("x"), connection: "appdb") == .none)
    }

    static let profile = MaskingProfile(
        rule: "r",
        columns: ["Customers.Email": .hash, "public.customers.ssn": .redact, "sales.orders.card": .partial, "billing.customers.email": .null],
        columnNames: [ColumnNamePattern(pattern: "*_TOKEN", strategy: .redact), ColumnNamePattern(pattern: "email", strategy: .partial)],
        detectors: [:])

    @Test("table.column rules come before column-name patterns; schemas count, nil meaning public")
    func strategyLookup() {
        let p = Self.profile
        #expect(p.strategy(schema: "public", table: "customers", column: "email") == .hash)
        #expect(p.strategy(schema: "billing", table: "customers", column: "EMAIL") == .null)
        #expect(p.strategy(schema: nil, table: "customers", column: "ssn") == .redact)
        #expect(p.strategy(schema: "public", table: "customers", column: "ssn") == .redact)
        #expect(p.strategy(schema: "other", table: "customers", column: "ssn") == nil)
        #expect(p.strategy(schema: "sales", table: "orders", column: "card") == .partial)
        #expect(p.strategy(schema: nil, table: "orders", column: "card") == nil)
        // Unknown origin: only patterns apply.
        #expect(p.strategy(schema: nil, table: nil, column: "email") == .partial)
        #expect(p.strategy(schema: nil, table: nil, column: "api_token") == .redact)
        #expect(p.strategy(schema: nil, table: "orders", column: "total") == nil)
    }

    @Test("masksColumns: any rule on the written table, or any pattern at all")
    func masksColumns() {
        let columnsOnly = MaskingProfile(rule: "r", columns: Self.profile.columns, columnNames: [], detectors: [:])
        #expect(columnsOnly.masksColumns(of: "customers"))
        #expect(columnsOnly.masksColumns(of: "public.customers"))
        #expect(columnsOnly.masksColumns(of: "elsewhere.customers"))  // "customers.email" is any schema
        #expect(columnsOnly.masksColumns(of: "orders"))  // unqualified: the search_path may reach sales
        #expect(columnsOnly.masksColumns(of: "SALES.ORDERS"))
        #expect(!columnsOnly.masksColumns(of: "public.orders"))
        #expect(!columnsOnly.masksColumns(of: "products"))
        #expect(Self.profile.masksColumns(of: "products"))
        #expect(!MaskingProfile.none.masksColumns(of: "customers"))
    }

    @Test("references in SQL text: the table narrows, the strictest rule wins, then patterns")
    func references() {
        let p = Self.profile
        #expect(p.strategy(forReference: "email", table: nil) == .null)  // billing.customers.email is strictest
        #expect(p.strategy(forReference: "c.email", table: "public.customers") == .hash)
        #expect(p.strategy(forReference: "card", table: "public.orders") == nil)
        #expect(p.strategy(forReference: "card", table: "sales.orders") == .partial)
        #expect(p.strategy(forReference: "card", table: "orders") == .partial)
        #expect(p.strategy(forReference: "SSN", table: "customers") == .redact)
        #expect(p.strategy(forReference: "session_token", table: "users") == .redact)
        #expect(p.strategy(forReference: "total", table: nil) == nil)
    }

    @Test("globs: '*' any run, '?' one character, whole name")
    func globs() {
        func match(_ pattern: String, _ name: String) -> Bool { ColumnNamePattern(pattern: pattern, strategy: .redact).matches(name) }
        #expect(match("*_token", "api_token") && match("?sn", "ssn") && match("e*l", "email") && match("*", ""))
        #expect(match("*a*b*c", "xaxbxbc") && match("EMAIL", "email"))
        #expect(!match("e*l", "emails") && !match("?sn", "sn") && !match("*_token", "token"))
    }

    @Test("the canonical form is stable and changes with the rules")
    func canonical() {
        let rule = MaskingRule(
            name: "r", groups: ["g"], columns: ["t.c": .hash], columnNames: [ColumnNamePattern(pattern: "*pw*", strategy: .null)],
            detectors: [.email: .partial, .card: .redact])
        #expect(
            MaskingPolicy(rules: [rule]).canonical.text
                == #"{"rules":[{"column_names":[{"pattern":"*pw*","strategy":"null"}],"columns":{"t.c":"hash"},"connections":null,"# +
                #""detectors":{"card":"redact","email":"partial"},"groups":["g"],"name":"r","subjects":null}]}"#)
        var changed = rule
        changed.detectors[.email] = .redact
        #expect(MaskingPolicy(rules: [changed]).canonical != MaskingPolicy(rules: [rule]).canonical)
    }
}
