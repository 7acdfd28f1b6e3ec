import Foundation
import Testing

@testable import CustosCore

@Suite("Policy evaluation")
struct PolicyTests {
    static let agent = Identity(subject: "agent-1", email: "a1@example.com", groups: ["agents"], issuer: "i", tokenID: nil, expiresAt: .distantFuture)
    static let dba = Identity(subject: "dba-1", email: nil, groups: ["dba"], issuer: "i", tokenID: nil, expiresAt: .distantFuture)

    static func statement(
        _ kind: String, read: [String] = [], written: [String] = [], functions: [String] = [], flags: Set<StatementInfo.Flag> = [], readOnly: Bool? = nil
    ) -> StatementInfo {
        StatementInfo(
            kind: kind, tablesRead: read, tablesWritten: written, functions: functions, flags: flags,
            readOnly: readOnly ?? (written.isEmpty && flags.isEmpty && ["select", "show", "explain"].contains(kind)), text: kind)
    }

    static let policy = Policy(rules: [
        PolicyRule(name: "deny-flagged", flags: [.destructive, .privileged, .opaque, .unparseable], verdict: .deny, message: "flagged"),
        PolicyRule(name: "agents-read", groups: ["agents"], connections: ["appdb"], readOnly: true, verdict: .allow, limits: Limits(maxRows: 100)),
        PolicyRule(name: "agents-tx", groups: ["agents"], kinds: ["begin", "commit", "rollback"], verdict: .allow),
        PolicyRule(name: "agents-write", groups: ["agents"], kinds: ["insert", "update", "delete"], verdict: .review),
        PolicyRule(name: "dba-all", groups: ["dba"], verdict: .allow, limits: Limits(statementTimeout: .seconds(5))),
    ])

    func decide(_ statements: [StatementInfo], _ identity: Identity = agent, connection: String = "appdb") -> Decision {
        Self.policy.evaluate(statements, identity: identity, connection: connection).decision
    }

    @Test("the first matching rule decides, with its limits and the policy version")
    func firstMatch() {
        let decision = decide([Self.statement("select", read: ["customers"])])
        #expect(decision.verdict == .allow)
        #expect(decision.rule == "agents-read")
        #expect(decision.limits.maxRows == 100)
        #expect(decision.policy == Self.policy.version)
        #expect(decide([Self.statement("update", written: ["customers"])]).verdict == .review)
        #expect(decide([Self.statement("select")], connection: "other").rule == "default")
    }

    @Test("nothing matching is denied by the default rule")
    func defaultDeny() {
        let decision = decide([Self.statement("vacuum")])
        #expect(decision.verdict == .deny && decision.rule == "default")
        #expect(Policy.denyAll.evaluate([Self.statement("select")], identity: Self.agent, connection: "appdb").decision.verdict == .deny)
    }

    @Test("a multi-statement string takes the strictest decision of its parts")
    func strictest() {
        let select = Self.statement("select", read: ["t"])
        let update = Self.statement("update", written: ["t"])
        let drop = Self.statement("drop", written: ["t"], flags: [.destructive])
        #expect(decide([select, update]).verdict == .review)
        let evaluation = Self.policy.evaluate([select, drop, update], identity: Self.agent, connection: "appdb")
        #expect(evaluation.decision.verdict == .deny)
        #expect(evaluation.decision.rule == "deny-flagged")
        #expect(evaluation.parts.map(\.decision.verdict) == [.allow, .deny, .review])
    }

    @Test("an allow rule never matches a flag it does not name")
    func flaggedNeverAllowedByAccident() {
        let policy = Policy(rules: [PolicyRule(name: "dba-all", groups: ["dba"], verdict: .allow)])
        for flag in StatementInfo.Flag.allCases {
            let decision = policy.evaluate([Self.statement("do", flags: [flag])], identity: Self.dba, connection: "appdb").decision
            #expect(decision.verdict == .deny, "\(flag)")
        }
        let named = Policy(rules: [PolicyRule(name: "dba-do", groups: ["dba"], flags: [.opaque], verdict: .allow)])
        #expect(named.evaluate([Self.statement("do", flags: [.opaque])], identity: Self.dba, connection: "c").decision.verdict == .allow)
        #expect(named.evaluate([Self.statement("do", flags: [.opaque, .privileged])], identity: Self.dba, connection: "c").decision.verdict == .deny)
    }

    @Test("the gate refuses a statement that changes how SQL is read, whatever the policy allows")
    func lexingRefusedByTheGate() {
        struct NoAnalyzer: StatementAnalyzer {
            func analyze(_ sql: String) -> [StatementInfo] { [] }
            func literalUses(_ sql: String) -> [LiteralUse] { [] }
            func copyInfo(_ sql: String) -> CopyInfo? { nil }
        }
        let everything = Policy(rules: [PolicyRule(name: "dba-all", groups: ["dba"], flags: Set(StatementInfo.Flag.allCases), verdict: .allow)])
        let gate = Gate(policy: everything, analyzer: NoAnalyzer())
        let connection = ConnectionTarget(name: "appdb", kind: "postgres", allowGroups: ["dba"])
        let set = Action(channel: .simple, text: "SET standard_conforming_strings = off", statements: [Self.statement("set", flags: [.lexing])])
        let decision = gate.decide(set, by: Self.dba, on: connection)
        #expect(decision.verdict == .deny)
        #expect(decision.sqlstate == "0A000")
        #expect(decision.policy == everything.version)
        let opaque = Action(channel: .simple, text: "DO $$ $$", statements: [Self.statement("do", flags: [.opaque])])
        #expect(gate.decide(opaque, by: Self.dba, on: connection).verdict == .allow)
    }

    @Test("subjects match sub or email; tables and functions match qualified names and wildcards")
    func conditions() {
        let policy = Policy(rules: [
            PolicyRule(name: "by-email", subjects: ["a1@example.com"], tables: ["public.customers"], verdict: .allow),
            PolicyRule(name: "by-schema", tables: ["audit.*"], verdict: .review),
            PolicyRule(name: "by-function", functions: ["pg_sleep"], verdict: .deny, message: "no sleeping"),
        ])
        func verdict(_ statement: StatementInfo, _ identity: Identity = Self.agent) -> String? {
            policy.evaluate([statement], identity: identity, connection: "c").decision.rule
        }
        #expect(verdict(Self.statement("select", read: ["customers"])) == "by-email")
        #expect(verdict(Self.statement("select", read: ["public.customers"])) == "by-email")
        #expect(verdict(Self.statement("select", read: ["customers"]), Self.dba) == "default")
        #expect(verdict(Self.statement("insert", written: ["audit.log"]), Self.dba) == "by-schema")
        #expect(verdict(Self.statement("select", functions: ["pg_catalog.pg_sleep"]), Self.dba) == "by-function")
        #expect(PolicyRule.name("other.customers", matches: "public.customers") == false)
        #expect(PolicyRule.name("x", matches: "*"))
    }

    @Test("time windows, across midnight and by weekday")
    func timeWindows() throws {
        let utc = try #require(TimeZone(identifier: "UTC"))
        let office = TimeWindow(weekdays: [1, 2, 3, 4, 5], from: 9 * 60, to: 18 * 60, timeZone: utc)
        let monday10 = Date(timeIntervalSince1970: 1_796_032_800)  // 2026-11-30 (a Monday) 10:00 UTC
        #expect(office.contains(monday10))
        #expect(!office.contains(monday10.addingTimeInterval(9 * 3600)))  // 19:00
        #expect(!office.contains(monday10.addingTimeInterval(-2 * 86400)))  // Saturday
        let night = TimeWindow(weekdays: [1], from: 22 * 60, to: 6 * 60, timeZone: utc)
        #expect(night.contains(monday10.addingTimeInterval(13 * 3600)))  // Monday 23:00
        #expect(night.contains(monday10.addingTimeInterval(17 * 3600)))  // Tuesday 03:00 belongs to Monday night
        #expect(!night.contains(monday10.addingTimeInterval(-7 * 3600)))  // Monday 03:00 belongs to Sunday night
    }

    @Test("limits combine to the strictest; the version changes with any rule")
    func limitsAndVersion() {
        let a = Limits(maxRows: 10, statementTimeout: .seconds(30))
        let b = Limits(maxRows: 50, statementTimeout: .seconds(5), ratePerSecond: 2)
        #expect(a.combined(with: b) == Limits(maxRows: 10, statementTimeout: .seconds(5), ratePerSecond: 2))
        var rules = Self.policy.rules
        rules[1].limits.maxRows = 101
        #expect(Policy(rules: rules).version != Self.policy.version)
        #expect(Policy(rules: Self.policy.rules).version == Self.policy.version)
    }
}
