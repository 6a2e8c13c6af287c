//! What a SQL tool's statement gives the model: its rows within the row
//! and byte limits, or the count of rows it changed; or the tool error its
//! result makes (no row where the tool needs one).

use super::{ResultShape, SqlTool};

/// A statement's output, or the message of the tool error it makes.
pub(super) type Output = Result<serde_json::Value, String>;

/// The output of a statement that returns rows, within the row and byte caps.
pub(super) fn shaped(tool: &SqlTool, rows: Vec<serde_json::Value>, more_rows: bool) -> Output {
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
            return Err(message.clone());
        }
        if tool.shape == ResultShape::One {
            return Err("no row matched".to_owned());
        }
    }
    match tool.shape {
        ResultShape::One => kept
            .into_iter()
            .next()
            .ok_or_else(|| "the row is larger than the tool's byte limit".to_owned()),
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
            Ok(output)
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
pub(super) fn affected(tool: &SqlTool, rows_affected: u64) -> Output {
    match &tool.empty_error {
        Some(message) if rows_affected == 0 => Err(message.clone()),
        _ => Ok(serde_json::json!({ "rows_affected": rows_affected })),
    }
}

/// The tool error of a statement its database did not stop at its timeout
/// (it waited on a lock, or the network did not answer): the call stopped
/// waiting, and the connection is closed rather than reused.
pub(super) fn abandoned(tool: &SqlTool) -> String {
    format!(
        "the statement ran past its timeout of {} ms and the call stopped waiting for it",
        tool.timeout.as_millis()
    )
}

/// The tool error of a statement stopped by its timeout.
pub(super) fn timed_out(tool: &SqlTool) -> String {
    format!(
        "the statement ran past its timeout of {} ms",
        tool.timeout.as_millis()
    )
}
