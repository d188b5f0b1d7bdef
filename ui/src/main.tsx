// Entry point: theme first (no flash), then the app.
import { render } from 'preact';
import { App } from './app';
import { applyTheme, initialTheme } from './lib/theme';
import './styles.css';

applyTheme(initialTheme());
render(<App />, document.getElementById('app')!);
