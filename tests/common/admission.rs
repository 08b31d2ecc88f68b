//! The chart's ValidatingAdmissionPolicies, as rendered into
//! `manifests/install.yaml`, evaluated offline the way the API server does:
//! variables in order (each sees the ones before it), then every validation;
//! a validation that errors refuses (the policies fail closed). CEL's
//! `authorizer` is emulated by RBAC over the rendered ClusterRoles the
//! requesting user is bound to, and object properties are escaped as
//! Kubernetes escapes them (`semi-trusted` is `semi__dash__trusted`).
//! The real API server runs the same policies in `tests/e2e_*.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, ExecutionError, FunctionContext, Program, ResolveResult, Value as CelValue};
use serde_json::{Value, json};

use super::rendered;

/// A CEL function that reads its target and arguments itself.
type Function = Box<dyn Fn(&mut FunctionContext) -> ResolveResult + Send + Sync>;

/// One write, as the API server hands it to admission.
pub struct Request<'a> {
    /// `CREATE` or `UPDATE`.
    pub operation: &'a str,
    /// The namespace written to.
    pub namespace: &'a str,
    /// Who writes.
    pub username: &'a str,
    /// The ClusterRoles (rendered by the chart) the user is bound to in
    /// `namespace`; what `authorizer` allows.
    pub roles: &'a [&'a str],
    /// The object before the write (`None` on CREATE).
    pub old: Option<Value>,
    /// The object written.
    pub object: Value,
}

/// The messages of the validations of `policy` that `request` fails;
/// empty when the API server would admit it.
pub fn refusals(policy: &Value, request: &Request) -> Vec<String> {
    let mut context = Context::default();
    context.add_variable_from_value("object", cel(&escaped(&request.object)));
    context.add_variable_from_value(
        "oldObject",
        request
            .old
            .as_ref()
            .map_or(CelValue::Null, |old| cel(&escaped(old))),
    );
    context.add_variable_from_value(
        "request",
        cel(
            &json!({"operation": request.operation, "namespace": request.namespace,
                    "userInfo": {"username": request.username}}),
        ),
    );
    add_authorizer(&mut context, rules_of(request.roles));
    context.add_function("join", Box::new(join) as Function);

    // Variables in order, each seeing the ones before it; one that fails
    // is absent, so whatever uses it fails too.
    let mut variables: HashMap<Key, CelValue> = HashMap::new();
    for variable in policy["spec"]["variables"].as_array().into_iter().flatten() {
        context.add_variable_from_value("variables", CelValue::Map(Map::from(variables.clone())));
        let name = variable["name"].as_str().unwrap();
        if let Ok(value) = evaluate(&context, variable["expression"].as_str().unwrap()) {
            variables.insert(Key::from(name), value);
        }
    }
    context.add_variable_from_value("variables", CelValue::Map(Map::from(variables)));

    let mut refused = Vec::new();
    for validation in policy["spec"]["validations"].as_array().unwrap() {
        let expression = validation["expression"].as_str().unwrap();
        match evaluate(&context, expression) {
            Ok(CelValue::Bool(true)) => {}
            Ok(CelValue::Bool(false)) => refused.push(message(&context, validation)),
            Ok(other) => panic!("{expression} gave {other:?}, not a bool"),
            Err(error) => refused.push(format!("error: {error}")),
        }
    }
    refused
}

/// A validation's message: its `messageExpression`, else its `message`.
fn message(context: &Context, validation: &Value) -> String {
    match validation["messageExpression"].as_str() {
        Some(expression) => match evaluate(context, expression) {
            Ok(CelValue::String(message)) => message.to_string(),
            other => panic!("{expression} gave {other:?}"),
        },
        None => validation["message"].as_str().unwrap().to_owned(),
    }
}

fn evaluate(context: &Context, expression: &str) -> Result<CelValue, ExecutionError> {
    let program = Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    program.execute(context)
}

fn cel(value: &Value) -> CelValue {
    cel::to_value(value).expect("JSON is a CEL value")
}

/// `object` with the properties under `spec` escaped as Kubernetes CEL
/// escapes schema property names (`-` becomes `__dash__`).
fn escaped(object: &Value) -> Value {
    fn escape(value: &Value) -> Value {
        match value {
            Value::Object(properties) => Value::Object(
                properties
                    .iter()
                    .map(|(key, value)| (key.replace('-', "__dash__"), escape(value)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
            other => other.clone(),
        }
    }
    let mut object = object.clone();
    if let Some(spec) = object.get_mut("spec") {
        *spec = escape(spec);
    }
    object
}

/// The rules of the rendered ClusterRoles `roles`.
fn rules_of(roles: &[&str]) -> Vec<Value> {
    roles
        .iter()
        .flat_map(|role| {
            rendered("ClusterRole", role)["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Kubernetes' CEL `authorizer`:
/// `authorizer.group(g).resource(r).namespace(n).name(x).check(verb).allowed()`,
/// answered by RBAC over `rules` (a binding in the request's namespace).
fn add_authorizer(context: &mut Context, rules: Vec<Value>) {
    context.add_variable_from_value(
        "authorizer",
        CelValue::Map(Map::from(HashMap::<Key, CelValue>::new())),
    );
    for field in ["group", "resource", "namespace", "name"] {
        context.add_function(field, with_attribute(field));
    }
    let rules = Arc::new(rules);
    let check: Function = Box::new(move |ftx: &mut FunctionContext| {
        let attributes = attributes(ftx)?;
        let verb = string_argument(ftx)?;
        let get = |field: &str| attributes.get(field).cloned().unwrap_or_default();
        let allowed = rules.iter().any(|rule| {
            let has = |list: &str, value: &str| {
                rule[list]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|item| item == value))
            };
            let names_ok = match rule["resourceNames"].as_array() {
                None => true,
                Some(names) => names.iter().any(|name| *name == get("name")),
            };
            has("apiGroups", &get("group"))
                && has("resources", &get("resource"))
                && has("verbs", &verb)
                && names_ok
        });
        Ok(CelValue::Map(Map::from(HashMap::from([(
            Key::from("allowed"),
            CelValue::Bool(allowed),
        )]))))
    });
    context.add_function("check", check);
    let allowed: Function = Box::new(|ftx: &mut FunctionContext| match ftx.this.as_ref() {
        Some(CelValue::Map(map)) => Ok(map.map[&Key::from("allowed")].clone()),
        _ => Err(ftx.error("allowed() on something other than a check")),
    });
    context.add_function("allowed", allowed);
}

/// `target.<field>(value)`: the authorizer's attributes so far, plus one.
fn with_attribute(field: &'static str) -> Function {
    Box::new(move |ftx: &mut FunctionContext| {
        let mut attributes: HashMap<Key, CelValue> = attributes(ftx)?
            .into_iter()
            .map(|(key, value)| (Key::from(key), CelValue::String(Arc::new(value))))
            .collect();
        let value = string_argument(ftx)?;
        attributes.insert(Key::from(field), CelValue::String(Arc::new(value)));
        Ok(CelValue::Map(Map::from(attributes)))
    })
}

fn attributes(ftx: &FunctionContext) -> Result<HashMap<String, String>, ExecutionError> {
    match ftx.this.as_ref() {
        Some(CelValue::Map(map)) => Ok(map
            .map
            .iter()
            .filter_map(|(key, value)| match (key, value) {
                (Key::String(key), CelValue::String(value)) => {
                    Some((key.to_string(), value.to_string()))
                }
                _ => None,
            })
            .collect()),
        _ => Err(ftx.error(format!("{}() outside an authorizer chain", ftx.name))),
    }
}

fn string_argument(ftx: &FunctionContext) -> Result<String, ExecutionError> {
    match ftx.resolve(ftx.args[0].clone())? {
        CelValue::String(value) => Ok(value.to_string()),
        other => Err(ftx.error(format!("{}() takes a string, not {other:?}", ftx.name))),
    }
}

/// Kubernetes' CEL strings library: `list.join(separator)`.
fn join(ftx: &mut FunctionContext) -> ResolveResult {
    let separator = string_argument(ftx)?;
    match ftx.this.as_ref() {
        Some(CelValue::List(items)) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| match item {
                    CelValue::String(part) => Ok(part.to_string()),
                    other => Err(ftx.error(format!("join() of {other:?}"))),
                })
                .collect::<Result<_, _>>()?;
            Ok(CelValue::String(Arc::new(parts.join(&separator))))
        }
        _ => Err(ftx.error("join() on something other than a list")),
    }
}

/// The value of `policy`'s variable `name`, one that reads no request (a
/// table of constants), as JSON.
pub fn evaluate_variable(policy: &Value, name: &str) -> Value {
    let variable = policy["spec"]["variables"]
        .as_array()
        .and_then(|variables| variables.iter().find(|variable| variable["name"] == name))
        .unwrap_or_else(|| panic!("no variable {name}"));
    let expression = variable["expression"].as_str().unwrap();
    let value =
        evaluate(&Context::default(), expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    value
        .json()
        .unwrap_or_else(|e| panic!("{expression}: {e:?}"))
}
