import CustosCore

/// What the walk of one statement's tree found; ``PostgresAnalyzer`` adds the text, normalized
/// text and fingerprint.
struct StatementFacts: Equatable {
    var kind = "unknown"
    var tablesRead: [String] = []
    var tablesWritten: [String] = []
    var functions: [String] = []
    var flags: Set<StatementInfo.Flag> = []
    var readOnly = false
    /// False when a decision looked at a literal's value (`set_config('role', …)`), so the result
    /// must not be cached under the normalized text, where that literal is a placeholder.
    var literalIndependent = true
    /// PREPARE / EXECUTE / DEALLOCATE: the prepared statement's name; PREPARE: its kind.
    var preparedName: String?
    var preparedKind: String?
}

/// Walks one statement's parse tree (a ``JSONTape`` of libpg_query's output) and collects tables,
/// functions and flags from every node, however deep: data-modifying CTEs under a SELECT, the
/// statement inside EXPLAIN ANALYZE / PREPARE / CREATE TABLE AS / DECLARE CURSOR, subqueries in any
/// clause. The walk is iterative (an explicit stack), because the tree can nest thousands of levels.
final class StatementWalker {
    /// What a node inherits from where it sits in the tree.
    struct Context {
        /// A RangeVar here is a write target (INSERT INTO x, DROP, …); reset below the target field.
        var write = false
        /// False inside EXPLAIN without ANALYZE: nothing there runs, so targets count as reads and
        /// nothing is destructive (privileged and opaque calls are kept: they fail closed).
        var executes = true
        /// Innermost visible CTE name, an index into `scopes` (-1: none).
        var scope: Int32 = -1
    }

    /// A queued node or list. Node types are carried as indices into ``Classification/ruleTable``
    /// (-1: a type with no rule, walked generically), so that a node costs one lookup.
    private struct Item {
        var entry: Int32
        /// For a list: the member entry naming its field, to type inline structs among the items.
        var key: Int32
        /// For a node: its rule; for a list: the rule of the node holding the list.
        var rule: Int16
        var isList: Bool
        var context: Context
    }

    private let tape: JSONTape
    private var stack: [Item] = []
    /// CTE names as a parent-linked arena: each scope is its name plus the enclosing scope.
    private var scopes: [(name: String, parent: Int32)] = []
    private var read: [String] = []
    private var written: [String] = []
    private var functions: [String] = []
    private var flags: Set<StatementInfo.Flag> = []
    private var literalIndependent = true

    private init(tape: JSONTape) {
        self.tape = tape
    }

    /// Analyses the statement node `statement` (the wrapped value of a RawStmt's `stmt`).
    static func analyze(_ tape: JSONTape, statement: Int32) -> StatementFacts {
        let walker = StatementWalker(tape: tape)
        guard let (type, fields) = tape.wrappedNode(statement) else {
            return StatementFacts(kind: "unknown", flags: [.opaque])
        }
        walker.stack.append(Item(entry: fields, key: -1, rule: Classification.ruleTable.rule(type), isList: false, context: Context()))
        walker.run()
        var facts = StatementFacts()
        facts.kind = walker.kind(type, fields)
        facts.tablesRead = Self.unique(walker.read)
        facts.tablesWritten = Self.unique(walker.written)
        facts.functions = Self.unique(walker.functions)
        facts.flags = walker.flags
        if Classification.kinds[type] == nil { facts.flags.insert(.opaque) }
        // pg_settings' update rule calls set_config: writing it sets any setting, the role and
        // those that change how the backend reads SQL included.
        if facts.tablesWritten.contains(where: { $0 == "pg_settings" || $0 == "pg_catalog.pg_settings" }) {
            facts.flags.formUnion([.privileged, .lexing])
        }
        facts.readOnly = walker.readsOnly(type, fields, depth: 0) && facts.tablesWritten.isEmpty && facts.flags.isEmpty
        facts.literalIndependent = walker.literalIndependent
        if ["PrepareStmt", "ExecuteStmt", "DeallocateStmt"].contains(type) {
            facts.preparedName = tape.string(fields, "name")
        }
        if type == "PrepareStmt", let query = tape.member(fields, "query"), let (inner, innerFields) = tape.wrappedNode(query) {
            facts.preparedKind = walker.kind(inner, innerFields)
        }
        return facts
    }

    private static func unique(_ names: [String]) -> [String] {
        guard names.count > 1 else { return names }
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }

    // MARK: Kind and read-only

    private func kind(_ type: String, _ fields: Int32) -> String {
        switch type {
        case "SelectStmt": return selectsInto(fields) ? "create_table_as" : "select"
        case "TransactionStmt": return tape.string(fields, "kind").flatMap { Classification.transactionKinds[$0] } ?? "transaction"
        case "VariableSetStmt":
            let setKind = tape.string(fields, "kind") ?? ""
            return setKind == "VAR_RESET" || setKind == "VAR_RESET_ALL" ? "reset" : "set"
        case "VacuumStmt": return tape.bool(fields, "is_vacuumcmd") ? "vacuum" : "analyze"
        case "GrantStmt": return tape.bool(fields, "is_grant") ? "grant" : "revoke"
        case "GrantRoleStmt": return tape.bool(fields, "is_grant") ? "grant_role" : "revoke_role"
        case "CreateFunctionStmt": return tape.bool(fields, "is_procedure") ? "create_procedure" : "create_function"
        default: return Classification.kinds[type] ?? Classification.snakeCase(type)
        }
    }

    /// SELECT … INTO, also when it starts a UNION: the grammar puts INTO on the leftmost SELECT.
    private func selectsInto(_ fields: Int32) -> Bool {
        var select = fields
        while true {
            if tape.member(select, "intoClause") != nil { return true }
            guard let left = tape.member(select, "larg") else { return false }
            select = left
        }
    }

    /// Whether the statement's kind only reads: SELECT (not INTO), SHOW, cursors, EXPLAIN without
    /// ANALYZE of anything, EXPLAIN ANALYZE / PREPARE of a read.
    private func readsOnly(_ type: String, _ fields: Int32, depth: Int) -> Bool {
        guard depth < 4 else { return false }
        switch type {
        case "ExplainStmt":
            if !explainAnalyzes(fields) { return true }
            fallthrough
        case "PrepareStmt":
            guard let query = tape.member(fields, "query"), let (inner, innerFields) = tape.wrappedNode(query) else { return false }
            return readsOnly(inner, innerFields, depth: depth + 1)
        default:
            return Classification.readKinds.contains(kind(type, fields))
        }
    }

    /// EXPLAIN's ANALYZE option, read as PostgreSQL's defGetBoolean does: no argument, or anything
    /// but `false`/`off`/0, means the statement runs (unknown spellings fail closed: they run).
    private func explainAnalyzes(_ fields: Int32) -> Bool {
        guard let options = tape.member(fields, "options") else { return false }
        var analyzes = false
        tape.forEachChild(options) { option in
            guard let (type, def) = tape.wrappedNode(option), type == "DefElem", tape.string(def, "defname") == "analyze" else { return }
            guard let arg = tape.member(def, "arg"), let (argType, value) = tape.wrappedNode(arg) else {
                analyzes = true
                return
            }
            switch argType {
            case "String":
                let text = (tape.string(value, "sval") ?? "").lowercased()
                analyzes = !(text == "false" || text == "off")
            case "Integer": analyzes = tape.int(value, "ival") != 0
            case "Boolean": analyzes = tape.bool(value, "boolval")
            default: analyzes = true
            }
        }
        return analyzes
    }

    // MARK: Walk

    private func run() {
        while let item = stack.popLast() {
            let mark = stack.count
            if item.isList {
                tape.forEachChild(item.entry) { child in push(child, parentRule: item.rule, key: item.key, context: item.context) }
            } else {
                visit(item.entry, rule: item.rule, context: item.context)
            }
            // Children were pushed in document order; reverse them so they pop in document order.
            if stack.count - mark > 1 { stack[mark...].reverse() }
        }
    }

    /// Queues the value `entry` of field `key` (the member entry that names the field) of a node
    /// whose rule is `parentRule`; scalars and leaf nodes are skipped.
    private func push(_ entry: Int32, parentRule: Int16, key: Int32, context: Context) {
        switch tape.tag(entry) {
        case .array:
            stack.append(Item(entry: entry, key: key, rule: parentRule, isList: true, context: context))
        case .object:
            if let member = tape.wrappedMember(entry) {
                let rule = Classification.ruleTable.rule(tape.key(member))
                if rule >= 0, Classification.ruleTable.rules[Int(rule)].handler == .leaf { return }
                stack.append(Item(entry: member, key: -1, rule: rule, isList: false, context: context))
            } else {
                stack.append(Item(entry: entry, key: -1, rule: inlineRule(parentRule: parentRule, key: key), isList: false, context: context))
            }
        default:
            return
        }
    }

    /// The rule of an inline (unwrapped) struct, from the field that holds it (see pg_query.proto).
    private func inlineRule(parentRule: Int16, key: Int32) -> Int16 {
        if tape.keyEquals(key, "relation") || tape.keyEquals(key, "rel") || tape.keyEquals(key, "view")
            || tape.keyEquals(key, "sequence") || tape.keyEquals(key, "table") || tape.keyEquals(key, "pktable")
            || tape.keyEquals(key, "constrrel")
        {
            return Classification.rangeVarRule
        }
        if tape.keyEquals(key, "name") { return parentRule == Classification.partitionCmdRule ? Classification.rangeVarRule : -1 }
        if tape.keyEquals(key, "larg") || tape.keyEquals(key, "rarg") || tape.keyEquals(key, "val") { return Classification.selectStmtRule }
        if tape.keyEquals(key, "intoClause") || tape.keyEquals(key, "into") { return Classification.intoClauseRule }
        if tape.keyEquals(key, "funccall") { return Classification.funcCallRule }
        if tape.keyEquals(key, "setstmt") { return Classification.variableSetRule }
        if tape.keyEquals(key, "base") { return Classification.createStmtRule }
        if tape.keyEquals(key, "action") { return Classification.grantStmtRule }
        return -1
    }

    private func flag(_ flag: StatementInfo.Flag, _ context: Context) {
        if flag == .destructive && !context.executes { return }
        flags.insert(flag)
    }

    private func visit(_ fields: Int32, rule ruleIndex: Int16, context: Context) {
        var inner = context
        inner.write = false
        var writeFields: [StaticString] = []
        if ruleIndex >= 0 {
            let rule = Classification.ruleTable.rules[Int(ruleIndex)]
            if rule.privileged { flag(.privileged, context) }
            if rule.opaque { flag(.opaque, context) }
            if rule.destructive { flag(.destructive, context) }
            writeFields = rule.writeFields
            switch rule.handler {
            case .generic:
                break
            case .leaf, .ignore:
                return
            case .rangeVar:
                recordTable(fields, context)
                return
            case .funcCall:
                recordFunction(fields, context)
            case .deleteOrUpdate:
                if tape.member(fields, "whereClause") == nil { flag(.destructive, context) }
            case .copy:
                if tape.bool(fields, "is_from") { writeFields = ["relation"] }
                // PROGRAM, or a file name on the server (COPY FROM STDIN / TO STDOUT have none).
                if tape.bool(fields, "is_program") || tape.member(fields, "filename") != nil { flag(.privileged, context) }
            case .drop:
                recordDropped(fields, context)
                return
            case .alterTableCmd:
                let subtype = tape.string(fields, "subtype") ?? ""
                if subtype.hasPrefix("AT_Drop") || subtype.hasPrefix("AT_DetachPartition") { flag(.destructive, context) }
                if Classification.privilegedAlterTableCommands.contains(subtype) { flag(.privileged, context) }
            case .alterDomain:
                // 'X' is DROP CONSTRAINT, 'N' DROP NOT NULL.
                let subtype = tape.string(fields, "subtype")
                if subtype == "X" || subtype == "N" { flag(.destructive, context) }
            case .variableSet:
                if let name = tape.string(fields, "name"), Classification.privilegedSettings.contains(name.lowercased()) {
                    flag(.privileged, context)
                }
                if setChangesLexing(fields) { flag(.lexing, context) }
            case .explain:
                inner.executes = context.executes && explainAnalyzes(fields)
            }
        }
        guard tape.tag(fields) == .object else { return }
        if let with = tape.member(fields, "withClause"), tape.tag(with) == .object {
            inner.scope = pushCTEs(with, context: inner)
        }
        tape.forEachChild(fields) { member in
            let tag = tape.tag(member)
            guard tag == .object || tag == .array, !tape.keyEquals(member, "withClause") else { return }
            var fieldContext = inner
            fieldContext.write = !writeFields.isEmpty && writeFields.contains { tape.keyEquals(member, $0) }
            push(member, parentRule: ruleIndex, key: member, context: fieldContext)
        }
    }

    /// Queues each CTE's body with the names visible to it (earlier CTEs, or all of them when
    /// RECURSIVE) and returns the scope for the rest of the statement (all of them).
    private func pushCTEs(_ with: Int32, context: Context) -> Int32 {
        guard let ctes = tape.member(with, "ctes") else { return context.scope }
        let recursive = tape.bool(with, "recursive")
        var bodies: [(fields: Int32, name: String)] = []
        tape.forEachChild(ctes) { cte in
            guard let (type, fields) = tape.wrappedNode(cte), type == "CommonTableExpr" else { return }
            bodies.append((fields, tape.string(fields, "ctename") ?? ""))
        }
        var all = context.scope
        for body in bodies { all = pushScope(body.name, parent: all) }
        var visible = context.scope
        for body in bodies {
            var bodyContext = context
            bodyContext.scope = recursive ? all : visible
            stack.append(Item(entry: body.fields, key: -1, rule: -1, isList: false, context: bodyContext))
            visible = pushScope(body.name, parent: visible)
        }
        return all
    }

    private func pushScope(_ name: String, parent: Int32) -> Int32 {
        scopes.append((name, parent))
        return Int32(scopes.count - 1)
    }

    private func inScope(_ name: String, _ scope: Int32) -> Bool {
        var current = scope
        while current >= 0 {
            let entry = scopes[Int(current)]
            if entry.name == name { return true }
            current = entry.parent
        }
        return false
    }

    // MARK: Recording

    private func recordTable(_ fields: Int32, _ context: Context) {
        guard let relation = tape.string(fields, "relname") else { return }
        let schema = tape.string(fields, "schemaname")
        let catalog = tape.string(fields, "catalogname")
        let writes = context.write && context.executes
        // An unqualified name that a visible CTE defines is that CTE, not a table. A write target
        // never is: PostgreSQL resolves INSERT/UPDATE/DELETE/MERGE targets to real tables only.
        if !context.write, schema == nil, catalog == nil, inScope(relation, context.scope) { return }
        let name = [catalog, schema, relation].compactMap { $0 }.joined(separator: ".")
        if writes { written.append(name) } else { read.append(name) }
    }

    /// DROP names its objects as lists of identifiers, not RangeVars.
    private func recordDropped(_ fields: Int32, _ context: Context) {
        guard Classification.droppedRelationTypes.contains(tape.string(fields, "removeType") ?? ""),
            let objects = tape.member(fields, "objects")
        else { return }
        tape.forEachChild(objects) { object in
            guard let (type, list) = tape.wrappedNode(object), type == "List", let items = tape.member(list, "items") else { return }
            var parts: [String] = []
            tape.forEachChild(items) { item in
                if let (itemType, string) = tape.wrappedNode(item), itemType == "String", let part = tape.string(string, "sval") {
                    parts.append(part)
                }
            }
            guard !parts.isEmpty else { return }
            let name = parts.joined(separator: ".")
            if context.executes { written.append(name) } else { read.append(name) }
        }
    }

    private func recordFunction(_ fields: Int32, _ context: Context) {
        guard let names = tape.member(fields, "funcname") else { return }
        var parts: [String] = []
        tape.forEachChild(names) { item in
            if let (type, string) = tape.wrappedNode(item), type == "String", let part = tape.string(string, "sval") {
                parts.append(part.lowercased())
            }
        }
        guard let base = parts.last else { return }
        // EXTRACT(…), SUBSTRING(… FROM …), AT TIME ZONE and the like: the grammar, not the user,
        // qualified them with pg_catalog.
        if parts.count == 2, parts[0] == "pg_catalog", tape.string(fields, "funcformat") == "COERCE_SQL_SYNTAX" {
            parts.removeFirst()
        }
        functions.append(parts.joined(separator: "."))
        if Classification.isPrivilegedFunction(base) { flag(.privileged, context) }
        if Classification.isOpaqueFunction(base) { flag(.opaque, context) }
        if base == "set_config" {
            literalIndependent = false
            if setConfigMaySet(Classification.privilegedSettings, fields) { flag(.privileged, context) }
            if setConfigMaySet(Classification.lexingSettings, fields) { flag(.lexing, context) }
        }
    }

    /// `SET`/`SET NAMES` of a lexing setting to anything but a safe literal. `RESET` and `DEFAULT`
    /// go back to the session's starting value, which the session checked. The decision looks at
    /// the value, so the analysis is not cached under the normalized text.
    private func setChangesLexing(_ fields: Int32) -> Bool {
        guard let name = tape.string(fields, "name")?.lowercased(), Classification.lexingSettings.contains(name) else { return false }
        literalIndependent = false
        switch tape.string(fields, "kind") {
        case "VAR_SET_DEFAULT", "VAR_RESET", "VAR_RESET_ALL": return false
        case "VAR_SET_VALUE": break
        default: return true
        }
        guard let args = tape.member(fields, "args"), tape.firstChild(args) < tape.end(args),
            let (type, constant) = tape.wrappedNode(tape.firstChild(args)), type == "A_Const"
        else { return true }
        let value: String
        if let literal = tape.member(constant, "sval") {
            value = tape.string(literal, "sval") ?? ""
        } else if let literal = tape.member(constant, "ival") {
            value = String(tape.int(literal, "ival"))  // libpg_query leaves out a zero
        } else {
            return true
        }
        return !GuardedSettings.isSafe(name, value: value)
    }

    /// Whether `set_config(name, value, is_local)` may set one of `settings`: when `name` is
    /// one of them, or anything but a literal (a parameter, an expression): we cannot know what it
    /// sets. A number, boolean or NULL literal names no setting PostgreSQL would accept.
    private func setConfigMaySet(_ settings: Set<String>, _ fields: Int32) -> Bool {
        guard let args = tape.member(fields, "args"), tape.firstChild(args) < tape.end(args),
            let (type, constant) = tape.wrappedNode(tape.firstChild(args)), type == "A_Const"
        else { return true }
        guard let literal = tape.member(constant, "sval") else { return false }
        return settings.contains((tape.string(literal, "sval") ?? "").lowercased())
    }
}
