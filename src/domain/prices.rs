//! Model prices (B-7, F-12): USD per million tokens, the built-in list laid
//! under the config's `[prices]`. Pure data; the cost of a run's usage is
//! computed in `agents::usage`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// USD per million tokens for one model. Cache prices default to 0: a
/// model whose provider bills no cache tokens needs only two numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_creation: f64,
}

impl ModelPrice {
    /// The first field that is not a finite amount ≥ 0, if any.
    pub fn invalid_field(&self) -> Option<&'static str> {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_creation", self.cache_creation),
        ]
        .into_iter()
        .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
        .map(|(k, _)| k)
    }
}

/// Prices per model, used when the output carries no cost (Codex) or no
/// result line yet (the running cost of a stream, B-7). The daemon's table
/// is the built-in one with the config's `[prices]` laid over it
/// (`Settings::prices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Priced when the output names no model, or one not in `models`.
    pub default_model: String,
    pub models: BTreeMap<String, ModelPrice>,
}

impl Default for PriceTable {
    /// Public list prices (USD per million tokens) as of late 2025. They are
    /// configurable and may be outdated: a deployment should set its own.
    fn default() -> Self {
        let p = |input, output, cache_read, cache_creation| ModelPrice {
            input,
            output,
            cache_read,
            cache_creation,
        };
        let models = [
            ("claude-opus-4-5", p(5.0, 25.0, 0.50, 6.25)),
            ("claude-opus-4-1", p(15.0, 75.0, 1.50, 18.75)),
            ("claude-sonnet-4-5", p(3.0, 15.0, 0.30, 3.75)),
            ("claude-haiku-4-5", p(1.0, 5.0, 0.10, 1.25)),
            // OpenAI bills no cache writes, hence cache_creation 0.
            ("gpt-5", p(1.25, 10.0, 0.125, 0.0)),
            ("gpt-5-codex", p(1.25, 10.0, 0.125, 0.0)),
            ("gpt-5-mini", p(0.25, 2.0, 0.025, 0.0)),
        ];
        PriceTable {
            default_model: "claude-sonnet-4-5".to_string(),
            models: models
                .into_iter()
                .map(|(m, p)| (m.to_string(), p))
                .collect(),
        }
    }
}

impl PriceTable {
    /// This table, pricing output that names no model (Codex) as `model`
    /// (the role's configured model) when the table knows it.
    pub fn for_model(&self, model: &str) -> Self {
        let mut prices = self.clone();
        let known = prices
            .models
            .keys()
            .filter(|k| !model.is_empty() && model.starts_with(k.as_str()))
            .max_by_key(|k| k.len())
            .cloned();
        if let Some(k) = known {
            prices.default_model = k;
        }
        prices
    }

    /// The price of `model`: exact name, else the longest listed name the
    /// model starts with (`claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`),
    /// else the default model. None when the default is not listed either.
    pub fn price(&self, model: Option<&str>) -> Option<&ModelPrice> {
        let by_name = |name: &str| {
            self.models.get(name).or_else(|| {
                self.models
                    .iter()
                    .filter(|(k, _)| name.starts_with(k.as_str()))
                    .max_by_key(|(k, _)| k.len())
                    .map(|(_, p)| p)
            })
        };
        model
            .and_then(by_name)
            .or_else(|| self.models.get(&self.default_model))
    }
}

/// The config's `[prices]` table: models added to or replacing the built-in
/// list, and optionally the model that prices output naming none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceOverrides {
    pub default_model: Option<String>,
    pub models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The built-in table with `overrides` laid over it: a configured model
    /// replaces the built-in price of the same name, others are added.
    pub fn with_overrides(overrides: &PriceOverrides) -> Self {
        let mut table = Self::default();
        table.models.extend(
            overrides
                .models
                .iter()
                .map(|(name, price)| (name.clone(), *price)),
        );
        if let Some(m) = overrides
            .default_model
            .as_ref()
            .filter(|m| !m.trim().is_empty())
        {
            table.default_model = m.trim().to_string();
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_and_add_models_and_steer_the_default() {
        let o: PriceOverrides = toml::from_str(
            "default_model = \"house-model\"\n\
             [models.house-model]\ninput = 2.0\noutput = 8.0\n\
             [models.gpt-5-codex]\ninput = 9.0\noutput = 9.5\ncache_read = 0.9\n",
        )
        .unwrap();
        let t = PriceTable::with_overrides(&o);
        let house = t.price(None).unwrap();
        assert_eq!(
            (house.input, house.output, house.cache_read),
            (2.0, 8.0, 0.0)
        );
        assert_eq!(t.price(Some("gpt-5-codex-2026")).unwrap().input, 9.0);
        // Untouched built-ins stay.
        assert_eq!(t.price(Some("claude-haiku-4-5")).unwrap().output, 5.0);
        assert_eq!(
            PriceTable::with_overrides(&PriceOverrides::default()),
            PriceTable::default()
        );
    }

    #[test]
    fn a_negative_or_unknown_field_is_refused() {
        let bad = ModelPrice {
            input: 1.0,
            output: -2.0,
            cache_read: 0.0,
            cache_creation: f64::NAN,
        };
        assert_eq!(bad.invalid_field(), Some("output"));
        assert!(
            toml::from_str::<PriceOverrides>(
                "[models.m]\ninput = 1.0\noutput = 1.0\ncache = 1.0\n"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<PriceOverrides>("[models.m]\ninput = 1.0\n").is_err(),
            "output is required"
        );
    }
}
