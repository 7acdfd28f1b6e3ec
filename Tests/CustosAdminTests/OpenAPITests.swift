import CustosAdmin
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing
import Yams

@Suite("Admin API: OpenAPI document")
struct OpenAPITests {
    static let documentPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/openapi.yaml").path

    static func document() throws -> [String: Any] {
        let text = try String(contentsOfFile: documentPath, encoding: .utf8)
        return try #require(try Yams.load(yaml: text) as? [String: Any])
    }

    static let methods: Set<String> = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]

    @Test("docs/openapi.yaml describes exactly the routes the API registers")
    func sameRoutes() throws {
        let document = try Self.document()
        #expect((document["openapi"] as? String)?.hasPrefix("3.0") == true)
        let paths = try #require(document["paths"] as? [String: Any])
        var described: Set<String> = []
        for (path, item) in paths {
            let operations = try #require(item as? [String: Any])
            for method in operations.keys where Self.methods.contains(method) {
                described.insert("\(method.uppercased()) \(path)")
            }
        }
        let registered = Set(AdminAPI.routes.map { "\($0.method) \($0.path)" })
        #expect(registered.count == AdminAPI.routes.count)
        #expect(described == registered)
    }

    @Test("every documented operation names its responses and the schemas exist")
    func schemas() throws {
        let document = try Self.document()
        let components = try #require(document["components"] as? [String: Any])
        let schemas = try #require(components["schemas"] as? [String: Any])
        #expect(schemas["Approval"] != nil)
        #expect(schemas["Error"] != nil)
        let security = try #require(components["securitySchemes"] as? [String: Any])
        let bearer = try #require(security["bearer"] as? [String: Any])
        #expect(bearer["scheme"] as? String == "bearer")

        // The Approval schema's properties are Approval's JSON keys.
        let approval = try #require(schemas["Approval"] as? [String: Any])
        let properties = Set(try #require(approval["properties"] as? [String: Any]).keys)
        let fixture = Fixture()
        let encoded = try JSONSerialization.jsonObject(with: JSONEncoder().encode(fixture.pending)) as? [String: Any] ?? [:]
        #expect(Set(encoded.keys).isSubset(of: properties))
        #expect(properties.isSubset(of: Set(encoded.keys).union(["used_at"])))
    }

    @Test("every registered route answers, none as an unknown route")
    func routesAnswer() async throws {
        let fixture = Fixture()
        try await fixture.test { client in
            for route in AdminAPI.routes {
                let uri = route.path.replacingOccurrences(of: "/sessions/{id}", with: "/sessions/s1")
                    .replacingOccurrences(of: "{id}", with: fixture.twoPerson.id)
                let method = HTTPRequest.Method(route.method)!
                let response = try await client.call(
                    method, uri, as: fixture.token("root"), json: method == .post ? #"{"comment": "checked"}"# : nil)
                #expect(response.errorCode != "not_found", "\(route.method) \(route.path)")
                #expect(response.status != .methodNotAllowed, "\(route.method) \(route.path)")
                #expect(response.status.code < 500, "\(route.method) \(route.path)")
                #expect(response.headers[.contentType] == "application/json")
            }
        }
    }
}
