//! Whole HTTP answers for the simulator tests.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

/// A whole HTTP answer, read into memory, with assertions for the simulators' shapes.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ASCII header"))
    }

    /// Asserts an RFC 6749 5.2 `{"error", "error_description"}` answer and returns the description.
    pub fn assert_error(&self, status: u16, error: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let json = self.json();
        assert_eq!(json["error"], error, "body: {json}");
        json["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts BigAnimal's API error shape and returns its message.
    pub fn assert_api_error(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let json = self.json();
        assert_eq!(json["error"]["status"], status, "body: {json}");
        assert!(json["error"]["errors"].is_array(), "body: {json}");
        json["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned()
    }

    /// The protected APIs' echo: 200, authorized, and what was asked.
    pub fn assert_echo(&self, vendor: &str, method: &str, path: &str) -> Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        let json = self.json();
        assert_eq!(json["vendor"], vendor);
        assert_eq!(json["method"], method);
        assert_eq!(json["path"], path);
        assert_eq!(json["authorized"], true);
        json
    }
}
