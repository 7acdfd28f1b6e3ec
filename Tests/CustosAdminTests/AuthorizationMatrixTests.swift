import CustosCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import CustosAdmin

/// Every admin route, called with no token, an expired token, and a token of each role (and of
/// no role): exactly the allowed callers get past authorization.
@Suite("Admin API: authorization matrix")
struct AuthorizationMatrixTests {
    enum Caller: String, CaseIterable {
        case none, expired, noRole, approver, auditor, admin
    }

    /// Who gets through, per route (docs/openapi.yaml says the same).
    static let allowed: [String: Set<Caller>] = [
        "GET /healthz": Set(Caller.allCases),
        "GET /api/v1/evidence/key": Set(Caller.allCases),
        "GET /api/v1/approvals": [.approver, .auditor, .admin],
        "GET /api/v1/approvals/{id}": [.approver, .auditor, .admin],
        "POST /api/v1/approvals/{id}/approve": [.approver, .admin],
        "POST /api/v1/approvals/{id}/deny": [.approver, .admin],
        "GET /api/v1/sessions": [.auditor, .admin],
        "GET /api/v1/sessions/{id}": [.auditor, .admin],
    ]

    @Test("the matrix covers every registered route")
    func coversEveryRoute() {
        #expect(Set(AdminAPI.routes.map { "\($0.method) \($0.path)" }) == Set(Self.allowed.keys))
    }

    @Test("each caller gets exactly the routes its role allows", arguments: AdminAPI.routes.map { "\($0.method) \($0.path)" })
    func route(_ route: String) async throws {
        let parts = route.split(separator: " ")
        let method = HTTPRequest.Method(rawValue: String(parts[0]))!
        let uri = parts[1].replacingOccurrences(of: "/approvals/{id}", with: "/approvals/a-pending")
            .replacingOccurrences(of: "/sessions/{id}", with: "/sessions/s1")
        for caller in Caller.allCases {
            // A fresh API per call: a decision must not change what the next caller sees.
            let fixture = Fixture()
            let token: String? =
                switch caller {
                case .none: nil
                case .expired: fixture.token("root", expiresIn: -600)
                case .noRole: fixture.token("mallory")
                case .approver: fixture.token("carol")
                case .auditor: fixture.token("dave")
                case .admin: fixture.token("root")
                }
            let response = try await fixture.test { client in
                try await client.call(method, uri, as: token, json: method == .post ? #"{"comment": "matrix"}"# : nil)
            }
            let through = response.status != .unauthorized && response.errorCode != "forbidden"
            let expected = Self.allowed[route]!.contains(caller)
            #expect(through == expected, "\(route) as \(caller.rawValue): \(response.status.code) \(response.errorCode ?? "")")
            if !expected {
                #expect(response.status == (caller == .none || caller == .expired ? .unauthorized : .forbidden), "\(route) as \(caller.rawValue)")
            }
        }
    }
}
