//! Request parameters of an API action, read with errors that name the
//! field: `MissingParameter` when it is absent, `InvalidParameter` when it
//! has the wrong type, `UnknownParameter` for a field the action lacks.

use super::tencent::ApiError;
use serde_json::{Map, Value};

pub struct Params {
    fields: Map<String, Value>,
    /// Where these fields sit, for messages ("Template.").
    prefix: String,
}

impl Params {
    pub fn parse(body: &[u8]) -> Result<Params, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params::from_map(Map::new(), ""));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(Params::from_map(fields, "")),
            Ok(_) => Err(ApiError::new(
                "InvalidParameter",
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::new(
                "InvalidParameter",
                format!("the request body is not valid JSON: {e}"),
            )),
        }
    }

    fn from_map(fields: Map<String, Value>, prefix: &str) -> Params {
        Params {
            fields,
            prefix: prefix.to_string(),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// Refuses fields the action does not have.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.fields.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::new(
                "UnknownParameter",
                format!("the parameter {} is not recognized", self.name(k)),
            )),
            None => Ok(()),
        }
    }

    fn present(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    fn missing(&self, field: &str) -> ApiError {
        ApiError::new(
            "MissingParameter",
            format!("the parameter {} is required", self.name(field)),
        )
    }

    fn wrong_type(&self, field: &str, what: &str) -> ApiError {
        ApiError::new(
            "InvalidParameter",
            format!("the parameter {} must be {what}", self.name(field)),
        )
    }

    pub fn str_opt(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong_type(field, "a string")),
        }
    }

    pub fn str(&self, field: &str) -> Result<String, ApiError> {
        match self.str_opt(field)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(self.missing(field)),
        }
    }

    /// Integers may come as JSON numbers or as digit strings (some SDKs
    /// send enums as strings).
    pub fn int_opt(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "an integer")),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.wrong_type(field, "an integer")),
            Some(_) => Err(self.wrong_type(field, "an integer")),
        }
    }

    pub fn int(&self, field: &str) -> Result<i64, ApiError> {
        self.int_opt(field)?.ok_or_else(|| self.missing(field))
    }

    pub fn bool_opt(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(field, "true or false")),
        }
    }

    pub fn strings(&self, field: &str) -> Result<Vec<String>, ApiError> {
        match self.present(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.wrong_type(field, "a list of strings")),
                })
                .collect(),
            Some(_) => Err(self.wrong_type(field, "a list of strings")),
        }
    }

    pub fn object_opt(&self, field: &str) -> Result<Option<Params>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Params::from_map(
                m.clone(),
                &format!("{}{field}.", self.prefix),
            ))),
            Some(_) => Err(self.wrong_type(field, "an object")),
        }
    }

    pub fn object(&self, field: &str) -> Result<Params, ApiError> {
        self.object_opt(field)?.ok_or_else(|| self.missing(field))
    }

    pub fn objects(&self, field: &str) -> Result<Vec<Params>, ApiError> {
        match self.present(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => Ok(Params::from_map(
                        m.clone(),
                        &format!("{}{field}.{i}.", self.prefix),
                    )),
                    _ => Err(self.wrong_type(field, "a list of objects")),
                })
                .collect(),
            Some(_) => Err(self.wrong_type(field, "a list of objects")),
        }
    }

    /// Offset and Limit of a list action: Limit defaults to `default`
    /// and may not exceed `max`.
    pub fn page(&self, default: i64, max: i64) -> Result<(usize, usize), ApiError> {
        let offset = self.int_opt("Offset")?.unwrap_or(0);
        let limit = self.int_opt("Limit")?.unwrap_or(default);
        if offset < 0 {
            return Err(ApiError::new(
                "InvalidParameterValue",
                "Offset may not be negative",
            ));
        }
        if !(1..=max).contains(&limit) {
            return Err(ApiError::new(
                "FailedOperation.InvalidLimit",
                format!("Limit must be between 1 and {max}"),
            ));
        }
        Ok((offset as usize, limit as usize))
    }
}

/// One page of a list.
pub fn page<T>(items: Vec<T>, (offset, limit): (usize, usize)) -> Vec<T> {
    items.into_iter().skip(offset).take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let p = Params::parse(br#"{"A": "x", "N": "7", "T": {"Id": true}, "L": [1]}"#).unwrap();
        assert_eq!(p.int("N").unwrap(), 7);
        let e = p.str("Missing").unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("MissingParameter", "the parameter Missing is required")
        );
        let t = p.object("T").unwrap();
        let e = t.int("Id").unwrap_err();
        assert_eq!(e.code, "InvalidParameter");
        assert!(e.message.contains("T.Id"), "{}", e.message);
        assert_eq!(p.strings("L").unwrap_err().code, "InvalidParameter");
        assert_eq!(
            p.only(&["A", "N", "T"]).unwrap_err().code,
            "UnknownParameter"
        );
        assert!(Params::parse(b"[1]").is_err());
        assert!(Params::parse(b"").is_ok());
    }
}
