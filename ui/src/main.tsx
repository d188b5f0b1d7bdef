// Entry point: locale fix before anything formats numbers, theme (no flash), then the app.
import './lib/locale-fix';
import { render } from 'preact';
import { App } from './app';
import { applyTheme, initialTheme } from './lib/theme';
import './styles.css';

applyTheme(initialTheme());
render(<App />, document.getElementById('app')!);
