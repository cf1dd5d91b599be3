//! Conversions at the edge of the contract: `google.protobuf.Value` (what gRPC callers
//! send, so grpcurl users type plain JSON) to and from JSON text (what the database
//! stores), and times to and from `google.protobuf.Timestamp`.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

/// A `Value` that has no JSON form: a NaN or infinite number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a number is NaN or infinite, which JSON cannot hold")]
pub struct NotJson;

/// A protobuf `Value` as JSON. An absent value is JSON `null`.
pub fn value_to_json(v: Option<&Value>) -> Result<serde_json::Value, NotJson> {
    use serde_json::Value as J;
    let Some(kind) = v.and_then(|v| v.kind.as_ref()) else {
        return Ok(J::Null);
    };
    Ok(match kind {
        Kind::NullValue(_) => J::Null,
        Kind::BoolValue(b) => J::Bool(*b),
        Kind::NumberValue(n) => {
            // Whole numbers stay integers in JSON text: 3, not 3.0.
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                J::from(*n as i64)
            } else {
                J::Number(serde_json::Number::from_f64(*n).ok_or(NotJson)?)
            }
        }
        Kind::StringValue(s) => J::String(s.clone()),
        Kind::ListValue(l) => J::Array(
            l.values
                .iter()
                .map(|v| value_to_json(Some(v)))
                .collect::<Result<_, _>>()?,
        ),
        Kind::StructValue(s) => J::Object(
            s.fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), value_to_json(Some(v))?)))
                .collect::<Result<_, NotJson>>()?,
        ),
    })
}

/// JSON as a protobuf `Value`.
pub fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match j {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// JSON text (as stored) as a protobuf `Value`; text that does not parse (which the
/// store never writes) reads as null rather than failing a whole listing.
pub fn text_to_value(text: &str) -> Value {
    json_to_value(&serde_json::from_str(text).unwrap_or(serde_json::Value::Null))
}

/// Microseconds since the Unix epoch, the unit every stored time uses.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A protobuf `Timestamp` of microseconds since the Unix epoch.
pub fn micros_to_timestamp(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Microseconds since the Unix epoch of a protobuf `Timestamp`.
pub fn timestamp_to_micros(ts: &Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_value() {
        let j: serde_json::Value = serde_json::json!({
            "prompt": "hi", "tokens": 40, "ratio": 0.5, "tags": ["a", null, true], "nested": {}
        });
        assert_eq!(value_to_json(Some(&json_to_value(&j))).unwrap(), j);
    }

    #[test]
    fn nan_is_not_json() {
        let v = Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(value_to_json(Some(&v)), Err(NotJson));
    }

    #[test]
    fn timestamps_round_trip() {
        for us in [0, 1, 1_732_500_000_123_456, -1] {
            assert_eq!(timestamp_to_micros(&micros_to_timestamp(us)), us);
        }
    }
}

/// Property tests of the protobuf <-> JSON path every input takes: JSON round-trips
/// through `Value` unchanged, and a `Value` from any bytes converts or is refused
/// (NaN, infinity), never panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(J::from),
            "\\PC{0,20}".prop_map(J::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(J::Array),
                proptest::collection::btree_map("\\PC{0,10}", inner, 0..8)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    fn has_non_finite(v: &Value) -> bool {
        match &v.kind {
            Some(Kind::NumberValue(n)) => !n.is_finite(),
            Some(Kind::ListValue(l)) => l.values.iter().any(has_non_finite),
            Some(Kind::StructValue(s)) => s.fields.values().any(has_non_finite),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn json_round_trips_through_value(j in json()) {
            prop_assert_eq!(value_to_json(Some(&json_to_value(&j))).unwrap(), j);
        }

        #[test]
        fn any_decoded_value_converts_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = <Value as prost::Message>::decode(bytes.as_slice()) {
                prop_assert_eq!(value_to_json(Some(&v)).is_err(), has_non_finite(&v));
            }
        }
    }
}
