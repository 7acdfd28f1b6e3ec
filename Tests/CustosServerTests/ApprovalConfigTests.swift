import CustosCore
import Testing

@testable import CustosServer

@Suite("Approval configuration")
struct ApprovalConfigTests {
    static func config(_ extra: String) -> String {
        ConfigTests.valid + "\n" + extra
    }

    @Test("review rules carry approvers and times; admin and webhooks load")
    func loads() throws {
        let config = try CustosConfig.parse(
            yaml: Self.config(
                """
                policy:
                  rules:
                    - {name: changes, match: {kinds: [update]}, action: review, approvers: [dba], required_approvals: 2, hold_timeout: 5s, approval_ttl: 10m}
                    - {name: other, match: {kinds: [insert]}, action: review}
                admin:
                  port: 0
                  roles: {approver: [dba], auditor: [auditors]}
                approvals:
                  webhooks: ["http://127.0.0.1:9999/hook"]
                """), baseDirectory: "/etc/custos")
        let review = try #require(config.policy?.rules.first?.review)
        #expect(review.approvers == ["dba"])
        #expect(review.required == 2)
        #expect(review.holdTimeout == .seconds(5))
        #expect(review.ttl == .seconds(600))
        #expect(config.policy?.rules.last?.review.approvers == [], "no approvers: the rule refuses at once")
        #expect(config.admin?.port == 0)
        #expect(config.admin?.roles == ["approver": ["dba"], "auditor": ["auditors"]])
        #expect(config.approvals.webhooks == ["http://127.0.0.1:9999/hook"])
        let without = try CustosConfig.parse(yaml: ConfigTests.valid, baseDirectory: "/etc/custos")
        #expect(without.admin == nil)
        let exposed = try CustosConfig.parse(yaml: Self.config("admin:\n  host: 0.0.0.0\n  allow_plain_http: true"), baseDirectory: "/etc/custos")
        #expect(exposed.admin?.host == "0.0.0.0", "plain HTTP off loopback only when asked for")
    }

    @Test(
        "bad approval settings are refused, naming the key",
        arguments: [
            ("policy:\n  rules:\n    - {name: r, action: allow, approvers: [dba]}", "policy.rules[0].approvers"),
            ("policy:\n  rules:\n    - {name: r, action: review, approvers: [dba], hold_timeout: 2h}", "policy.rules[0].hold_timeout"),
            ("policy:\n  rules:\n    - {name: r, action: review, approvers: [dba], hold_timeout: 60s, approval_ttl: 10s}", "policy.rules[0].approval_ttl"),
            ("policy:\n  rules:\n    - {name: r, action: review, approvers: []}", "policy.rules[0].approvers"),
            ("approvals:\n  webhooks: [\"ftp://x/y\"]", "approvals.webhooks[0]"),
            ("admin:\n  roles: {root: [x]}", "admin.roles.root"),
            ("admin:\n  host: 0.0.0.0", "admin.host"),
        ])
    func refused(yaml: String, key: String) {
        #expect {
            try CustosConfig.parse(yaml: Self.config(yaml), baseDirectory: "/etc/custos")
        } throws: { error in
            (error as? ConfigError)?.key == key
        }
    }
}
