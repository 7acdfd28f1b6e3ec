import Foundation
import Yams

/// YAML text as plain values (String, Int, Double, Bool, NSNull, arrays, string-keyed
/// dictionaries), built from Yams's node tree. Yams's own `load` traps on a mapping key that is
/// not a string, and its integer constructor on a base-60 integer too large for `Int`
/// (`999999999999999999:59`); both found by scripts/fuzz (fuzz/crashes/config). Here the first is
/// an error and the second a string (no setting is written in base 60), which the setting's
/// reader then refuses by name.
enum YAMLDocument {
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    /// The document's value, nil for an empty document.
    static func load(_ text: String) throws -> Any? {
        guard let node = try Yams.compose(yaml: text) else { return nil }
        return try value(node, depth: 0)
    }

    static func value(_ node: Node, depth: Int) throws -> Any {
        // Deeper than any configuration needs: a hostile document must not exhaust the stack.
        guard depth < 64 else { throw Invalid(description: "nested more than 64 levels deep") }
        switch node {
        case .scalar(let scalar):
            // The tag the resolver gave the scalar (a quoted "true" stays a string).
            switch Resolver.default.resolveTag(of: node) {
            case .null: return NSNull()
            case .bool: return Bool.construct(from: scalar) ?? scalar.string
            case .int: return scalar.string.contains(":") ? scalar.string : Int.construct(from: scalar) ?? scalar.string
            case .float: return Double.construct(from: scalar) ?? scalar.string
            default: return scalar.string
            }
        case .sequence(let sequence):
            return try sequence.map { try value($0, depth: depth + 1) }
        case .mapping(let mapping):
            var dictionary: [String: Any] = [:]
            for (key, element) in mapping {
                guard case .scalar(let scalar) = key else { throw Invalid(description: "a mapping key that is not a plain string") }
                dictionary[scalar.string] = try value(element, depth: depth + 1)
            }
            return dictionary
        case .alias:
            throw Invalid(description: "YAML aliases are not supported in the configuration")
        }
    }
}
