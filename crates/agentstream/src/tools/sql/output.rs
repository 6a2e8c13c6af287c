//! What a SQL tool's statement gives the model: its rows within the row
//! and byte limits, or the count of rows it changed.

use super::{ResultShape, SqlTool};

/// The output of a statement that returns rows, within the row and byte caps.
pub(super) fn shaped(
    tool: &SqlTool,
    rows: Vec<serde_json::Value>,
    more_rows: bool,
) -> serde_json::Value {
    let mut kept = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    let mut cut_by_bytes = false;
    for mut row in rows {
        parse_json_columns(&mut row, &tool.json_columns);
        let size = row.to_string().len() + 1;
        if bytes + size > tool.max_bytes {
            cut_by_bytes = true;
            break;
        }
        bytes += size;
        kept.push(row);
    }
    if kept.is_empty() && !cut_by_bytes {
        if let Some(message) = &tool.empty_error {
            return serde_json::json!({ "error": message });
        }
        if tool.shape == ResultShape::One {
            return serde_json::json!({ "error": "no row matched" });
        }
    }
    match tool.shape {
        ResultShape::One => kept.into_iter().next().unwrap_or_else(
            || serde_json::json!({ "error": "the row is larger than the tool's byte limit" }),
        ),
        ResultShape::Rows => {
            let truncated = more_rows || cut_by_bytes;
            let mut output = serde_json::json!({
                "rows": kept,
                "row_count": kept.len(),
                "truncated": truncated,
            });
            if truncated {
                output["note"] = if cut_by_bytes {
                    format!("rows were cut at {} bytes; ask for fewer", tool.max_bytes)
                } else {
                    format!(
                        "only the first {} rows are shown; ask for fewer",
                        tool.max_rows
                    )
                }
                .into();
            }
            output
        }
    }
}

fn parse_json_columns(row: &mut serde_json::Value, columns: &[String]) {
    for column in columns {
        if let Some(value) = row.get_mut(column)
            && let Some(text) = value.as_str()
            && let Ok(parsed) = serde_json::from_str(text)
        {
            *value = parsed;
        }
    }
}

/// The output of a statement that returns no rows.
pub(super) fn affected(tool: &SqlTool, rows_affected: u64) -> serde_json::Value {
    match &tool.empty_error {
        Some(message) if rows_affected == 0 => serde_json::json!({ "error": message }),
        _ => serde_json::json!({ "rows_affected": rows_affected }),
    }
}

/// The tool error of a statement stopped by its timeout.
pub(super) fn timed_out(tool: &SqlTool) -> String {
    format!(
        "the statement ran past its timeout of {} ms",
        tool.timeout.as_millis()
    )
}
