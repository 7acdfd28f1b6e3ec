import CustosAdmin
import CustosCore
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@Suite("Admin API: approvals")
struct AdminAPITests {
    let fixture = Fixture()

    @Test("healthz answers without authentication")
    func health() async throws {
        try await fixture.test { client in
            let response = try await client.call(.get, "/healthz")
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.object["status"] as? String == "ok")
        }
    }

    @Test("no token, a malformed header, a garbage token and an expired token are 401")
    func unauthenticated() async throws {
        let fixture = self.fixture
        let expired = fixture.token("carol", expiresIn: -3600)
        try await fixture.test { client in
            let missing = try await client.call(.get, "/api/v1/approvals")
            #expect(missing.status == .unauthorized)
            #expect(missing.headers[.wwwAuthenticate] == "Bearer")
            #expect(missing.errorCode == "unauthorized")

            let basic = try await client.call(.get, "/api/v1/approvals", authorization: "Basic Y2Fyb2w6c2VjcmV0")
            #expect(basic.status == .unauthorized)
            #expect(basic.headers[.wwwAuthenticate] == "Bearer")

            let empty = try await client.call(.get, "/api/v1/approvals", authorization: "Bearer ")
            #expect(empty.status == .unauthorized)

            let garbage = try await client.call(.get, "/api/v1/approvals", as: "not-a-token")
            #expect(garbage.status == .unauthorized)
            #expect(garbage.errorCode == "invalid_token")
            #expect(garbage.errorMessage == "invalid token: malformed token")
            #expect(garbage.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
            #expect(!garbage.text.contains("not-a-token"))

            let old = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: expired)
            #expect(old.status == .unauthorized)
            #expect(old.errorMessage == "invalid token: token expired")
            #expect(!old.text.contains(expired))
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("a token signed by another key is 401")
    func foreignSignature() async throws {
        let stranger = TestSigner(kid: "admin-test")
        let forged = stranger.token([
            "iss": Fixture.issuer, "aud": "custos", "sub": "root", "groups": ["platform"], "exp": Date().timeIntervalSince1970 + 600,
        ])
        try await fixture.test { client in
            let response = try await client.call(.get, "/api/v1/approvals", as: forged)
            #expect(response.status == .unauthorized)
            #expect(response.errorMessage == "invalid token: signature invalid")
        }
    }

    @Test("an auditor lists and reads but cannot decide; someone without a role is forbidden")
    func auditor() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let list = try await client.call(.get, "/api/v1/approvals", as: fixture.token("dave"))
            #expect(list.status == .ok)
            #expect((list.object["approvals"] as? [Any])?.count == 3)

            let one = try await client.call(.get, "/api/v1/approvals/a-pending", as: fixture.token("dave"))
            #expect(one.status == .ok)
            #expect(try one.approval() == fixture.pending)

            let approve = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("dave"), json: "{}")
            #expect(approve.status == .forbidden)
            #expect(approve.errorCode == "forbidden")

            let nobody = try await client.call(.get, "/api/v1/approvals", as: fixture.token("mallory"))
            #expect(nobody.status == .forbidden)
            #expect(nobody.errorCode == "forbidden")
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("an approver in the approval's groups approves it")
    func approve() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let response = try await client.call(
                .post, "/api/v1/approvals/a-pending/approve", as: fixture.token("carol"), json: #"{"comment": "  looks right  "}"#)
            #expect(response.status == .ok)
            let approval = try response.approval()
            #expect(approval.status == .approved)
            #expect(approval.decisions.count == 1)
            #expect(approval.decisions.first?.approver == "carol")
            #expect(approval.decisions.first?.comment == "looks right")
            #expect(response.object["approver_groups"] as? [String] == ["dba"])

            let again = try await client.call(.get, "/api/v1/approvals/a-pending", as: fixture.token("carol"))
            #expect(try again.approval().status == .approved)
        }
        #expect(fixture.book.get("a-pending")?.status == .approved)
    }

    @Test("approve needs no body; an empty comment is none; required approvals approve")
    func approveWithoutBody() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let first = try await client.call(.post, "/api/v1/approvals/a-two/approve", as: fixture.token("erin"))
            #expect(first.status == .ok)
            #expect(try first.approval().status == .pending)
            #expect(try first.approval().decisions.first?.comment == nil)
            let second = try await client.call(.post, "/api/v1/approvals/a-two/approve", as: fixture.token("frank"), json: #"{"comment": ""}"#)
            #expect(try second.approval().status == .approved)
        }
    }

    @Test("requesters cannot approve their own statements")
    func selfApproval() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let response = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("alice"))
            #expect(response.status == .forbidden)
            #expect(response.errorCode == "self_approval")
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("an approver outside the approval's groups is not eligible")
    func notEligible() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let response = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("erin"))
            #expect(response.status == .forbidden)
            #expect(response.errorCode == "not_eligible")
        }
    }

    @Test("deny needs a non-empty comment")
    func denyNeedsComment() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            for body in [nil, "{}", #"{"comment": "   "}"#, #"{"comment": null}"#] {
                let response = try await client.call(.post, "/api/v1/approvals/a-pending/deny", as: fixture.token("carol"), json: body)
                #expect(response.status == .badRequest)
                #expect(response.errorCode == "comment_required")
            }
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("a body that is not the expected JSON is 400")
    func badBody() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            for body in ["{", "[]", #"{"comment": 7}"#, "comment=yes"] {
                let response = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("carol"), json: body)
                #expect(response.status == .badRequest, "\(body)")
                #expect(response.errorCode == "invalid_body")
            }
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("deny with a comment denies; a second decision is a conflict")
    func denyThenConflict() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let deny = try await client.call(
                .post, "/api/v1/approvals/a-pending/deny", as: fixture.token("carol"), json: #"{"comment": "not during the freeze"}"#)
            #expect(deny.status == .ok)
            let approval = try deny.approval()
            #expect(approval.status == .denied)
            #expect(approval.decisions.first?.verdict == .deny)
            #expect(approval.decisions.first?.comment == "not during the freeze")

            let again = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("root"))
            #expect(again.status == .conflict)
            #expect(again.errorCode == "not_pending")

            // The same approver twice on a two-person approval.
            let first = try await client.call(.post, "/api/v1/approvals/a-two/approve", as: fixture.token("erin"))
            #expect(first.status == .ok)
            let twice = try await client.call(.post, "/api/v1/approvals/a-two/approve", as: fixture.token("erin"))
            #expect(twice.status == .conflict)
            #expect(twice.errorCode == "already_decided")
        }
        #expect(fixture.book.get("a-pending")?.status == .denied)
    }

    @Test("unknown approvals are 404 for reads and decisions")
    func unknownApproval() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let get = try await client.call(.get, "/api/v1/approvals/nope", as: fixture.token("dave"))
            #expect(get.status == .notFound)
            #expect(get.errorCode == "approval_not_found")
            let approve = try await client.call(.post, "/api/v1/approvals/nope/approve", as: fixture.token("carol"))
            #expect(approve.status == .notFound)
            #expect(approve.errorCode == "approval_not_found")
            let deny = try await client.call(.post, "/api/v1/approvals/nope/deny", as: fixture.token("carol"), json: #"{"comment": "no"}"#)
            #expect(deny.status == .notFound)
        }
    }

    @Test("the status filter selects; a bad status is 400")
    func statusFilter() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            func ids(_ query: String) async throws -> [String] {
                let response = try await client.call(.get, "/api/v1/approvals\(query)", as: fixture.token("dave"))
                #expect(response.status == .ok)
                return (response.object["approvals"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            }
            #expect(try await ids("") == ["a-pending", "a-two", "a-approved"])  // newest first
            #expect(try await ids("?status=pending") == ["a-pending", "a-two"])
            #expect(try await ids("?status=approved") == ["a-approved"])
            #expect(try await ids("?status=used").isEmpty)

            for bad in ["?status=bogus", "?status=", "?status=PENDING"] {
                let response = try await client.call(.get, "/api/v1/approvals\(bad)", as: fixture.token("dave"))
                #expect(response.status == .badRequest, "\(bad)")
                #expect(response.errorCode == "invalid_status")
            }
        }
    }

    @Test("a decision that cannot be recorded is 503 and leaves the approval pending")
    func notRecorded() async throws {
        let fixture = Fixture(recorder: ImmediateRecorder(fails: true))
        try await fixture.test { client in
            let response = try await client.call(.post, "/api/v1/approvals/a-pending/approve", as: fixture.token("carol"))
            #expect(response.status == .serviceUnavailable)
            #expect(response.errorCode == "not_recorded")
        }
        #expect(fixture.book.get("a-pending")?.status == .pending)
    }

    @Test("unknown routes are JSON 404; a known path with another method is 405")
    func unknownRoutes() async throws {
        let fixture = self.fixture
        try await fixture.test { client in
            let missing = try await client.call(.get, "/api/v2/approvals", as: fixture.token("root"))
            #expect(missing.status == .notFound)
            #expect(missing.errorCode == "not_found")
            #expect(missing.headers[.contentType] == "application/json")

            let method = try await client.call(.delete, "/api/v1/approvals/a-pending", as: fixture.token("root"))
            #expect(method.status == .methodNotAllowed)
            #expect(method.errorCode == "method_not_allowed")
            #expect(method.headers[.allow] == "GET")

            let get = try await client.call(.get, "/api/v1/approvals/a-pending/approve", as: fixture.token("root"))
            #expect(get.status == .methodNotAllowed)
            #expect(get.headers[.allow] == "POST")
        }
    }

    @Test("the application serves on a real socket")
    func live() async throws {
        try await fixture.app.test(.live) { client in
            let response = try await client.call(.get, "/healthz")
            #expect(response.status == .ok)
        }
    }
}
